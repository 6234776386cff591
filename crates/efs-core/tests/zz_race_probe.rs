mod common;
use common::{Env, p, put_with};
use efs_core::{CoreError, Precondition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let env = Env::new();
    let fs = env.fs.clone();
    let mut lost = 0;
    let mut writer_ok = 0;
    for i in 0..200 {
        let d = format!("/d{i}");
        fs.mkdir(&p(&d)).await.unwrap();
        let fs2 = fs.clone();
        let f = format!("{d}/f");
        let w = tokio::spawn(async move { put_with(&fs2, &f, b"x", None, Precondition::None).await });
        let del = fs.delete(&p(&d), Precondition::None, false).await;
        let wr = w.await.unwrap();
        if wr.is_ok() {
            writer_ok += 1;
            match fs.stat(&p(&format!("{d}/f"))).await {
                Err(CoreError::NotFound) => { lost += 1; eprintln!("lost at {i}: del={del:?}"); }
                _ => {}
            }
        }
    }
    let rep = fs.fsck().await.unwrap();
    eprintln!("writer_ok={writer_ok} lost={lost} fsck errors={}", rep.errors.len());
}
