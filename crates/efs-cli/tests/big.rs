//! A 1 GiB file up and down with `efs cp`: byte-exact, and the client's memory stays
//! constant (its peak RSS is bounded far below the file size).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::Env;

const SIZE: u64 = 1 << 30;

/// Runs `efs args`, polling its peak RSS (VmHWM) until it exits. Returns (success, peak KiB).
fn run_measured(env: &Env, args: &[&str]) -> (bool, u64) {
    let mut child = env
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running efs");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kib) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(st) = child.try_wait().unwrap() {
            return (st.success(), peak);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_gib_up_and_down_with_constant_client_memory() {
    let env = Env::new();
    let src = env.path("big.bin");
    {
        // Distinct content in every MiB, written without holding the file.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut block = vec![0u8; 1 << 20];
        aws_lc_rs::rand::fill(&mut block).unwrap();
        for i in 0..(SIZE >> 20) {
            block[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let (ok, up_peak) = run_measured(&env, &["cp", "-q", src.to_str().unwrap(), "drive:/big.bin"]);
    assert!(ok, "upload failed");
    let dst = env.path("back.bin");
    let (ok, down_peak) =
        run_measured(&env, &["cp", "-q", "drive:/big.bin", dst.to_str().unwrap()]);
    assert!(ok, "download failed");
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), SIZE);
    let same = std::process::Command::new("cmp")
        .arg("-s")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap()
        .success();
    assert!(same, "the downloaded file differs from the uploaded one");
    eprintln!("efs client peak RSS: upload {up_peak} KiB, download {down_peak} KiB");
    // Constant memory: a few buffers, nowhere near the 1 GiB file.
    for (what, kib) in [("upload", up_peak), ("download", down_peak)] {
        assert!(kib > 0, "{what}: could not read the client's RSS");
        assert!(
            kib < 96 * 1024,
            "{what}: client peak RSS {kib} KiB is not constant memory"
        );
    }
}

/// `efs tar` and `efs untar` stream: a 256 MiB file goes through gzip and age and back with
/// the client's memory far below the file's size, and `untar` restores it byte-exact.
#[test]
fn tar_and_untar_stream_in_constant_memory() {
    const TAR_SIZE: u64 = 256 << 20;
    let env = Env::new();
    let src = env.path("tar-src.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut block = vec![0u8; 1 << 20];
        aws_lc_rs::rand::fill(&mut block).unwrap();
        for i in 0..(TAR_SIZE >> 20) {
            block[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let (ok, _) = run_measured(
        &env,
        &["cp", "-q", src.to_str().unwrap(), "drive:/t/big.bin"],
    );
    assert!(ok, "upload failed");
    let key = env.path("age-key.txt");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (apt-get install age) runs");
    assert!(out.status.success(), "{out:?}");
    let recipient = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        .expect("age-keygen writes the public key");
    let archive = env.path("t.tar.gz.age");
    let (ok, tar_peak) = run_measured(
        &env,
        &[
            "tar",
            "-q",
            "drive:/t",
            "-o",
            archive.to_str().unwrap(),
            "-r",
            &recipient,
        ],
    );
    assert!(ok, "efs tar failed");
    assert!(std::fs::metadata(&archive).unwrap().len() > TAR_SIZE / 2);
    let (ok, untar_peak) = run_measured(
        &env,
        &[
            "untar",
            "-q",
            archive.to_str().unwrap(),
            "drive:/restored",
            "-i",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "efs untar failed");
    let back = env.path("restored.bin");
    let (ok, _) = run_measured(
        &env,
        &[
            "cp",
            "-q",
            "drive:/restored/big.bin",
            back.to_str().unwrap(),
        ],
    );
    assert!(ok, "download of the restored file failed");
    let same = std::process::Command::new("cmp")
        .arg("-s")
        .arg(&src)
        .arg(&back)
        .status()
        .unwrap()
        .success();
    assert!(same, "the restored file differs");
    eprintln!("efs client peak RSS: tar {tar_peak} KiB, untar {untar_peak} KiB");
    for (what, kib) in [("tar", tar_peak), ("untar", untar_peak)] {
        assert!(kib > 0, "{what}: could not read the client's RSS");
        assert!(
            kib < 96 * 1024,
            "{what}: client peak RSS {kib} KiB is not constant memory"
        );
    }
}
