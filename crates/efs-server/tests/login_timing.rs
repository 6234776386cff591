//! Timing of login challenges: a known and an unknown user name must be answered alike, in
//! shape and in time, so that `POST /_efs/auth/challenge` cannot be used to find out which
//! user names exist.
//!
//! Statistical approach, chosen to be robust on a noisy shared 2-core machine:
//! - Samples are *interleaved* in a random order (known, unknown, …) on one keep-alive
//!   connection, so drift (another process's build, CPU frequency) hits both sides alike.
//! - The statistic is the *median* of each side, which ignores the long tail of scheduler
//!   stalls that would dominate a mean.
//! - The tolerance is tied to the measured noise: the difference of the medians must stay
//!   under five standard errors of a median (estimated from the pooled median absolute
//!   deviation: SE ≈ 1.2533 × 1.4826 × MAD / √n) or 5 % of the pooled median, whichever is
//!   larger. A real difference (a user lookup, a key parse or a signature check on one
//!   side only) shifts every sample of that side, hence its median, by its full cost; what
//!   is detectable therefore shrinks with the noise (about 1 ms on a busy debug build,
//!   tens of µs on a quiet one).
//! - A round that fails is measured again (at most 3 rounds): a burst of noise can break one
//!   round, a systematic difference breaks all of them.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{Value, json};

const SAMPLES: usize = 400;
const ROUNDS: usize = 3;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One challenge: its duration and its answer.
async fn timed_challenge(srv: &TestServer, user: &str) -> (Duration, Value) {
    let t0 = Instant::now();
    let r = srv
        .client
        .post(srv.url("/_efs/auth/challenge"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    let d = t0.elapsed();
    assert_eq!(status, 200, "challenge for {user}: {v}");
    (d, v)
}

/// The parts of an answer that may not depend on the user: keys, nonce length, server,
/// lifetime.
fn shape(v: &Value) -> (Vec<String>, usize, Value, Value) {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    (
        keys,
        v["nonce"].as_str().unwrap().len(),
        v["server"].clone(),
        v["expires_in"].clone(),
    )
}

#[tokio::test]
async fn known_and_unknown_user_challenges_take_the_same_time() {
    let srv = TestServer::start(&[]);
    srv.create_fs("main");
    let _key = srv.create_user("alice", &["main"], false);
    // Warm up the connection and the server's first-use paths.
    for _ in 0..50 {
        timed_challenge(&srv, "alice").await;
        timed_challenge(&srv, "mallory").await;
    }
    let reference = shape(&timed_challenge(&srv, "alice").await.1);

    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    let mut last = String::new();
    for round in 1..=ROUNDS {
        let mut known = Vec::with_capacity(SAMPLES);
        let mut unknown = Vec::with_capacity(SAMPLES);
        while known.len() < SAMPLES || unknown.len() < SAMPLES {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let pick_known = unknown.len() >= SAMPLES || (known.len() < SAMPLES && rng & 1 == 0);
            let user = if pick_known { "alice" } else { "mallory" };
            let (d, v) = timed_challenge(&srv, user).await;
            assert_eq!(
                shape(&v),
                reference,
                "the answer for {user} has the same shape"
            );
            if pick_known {
                known.push(d);
            } else {
                unknown.push(d);
            }
        }
        let mut pooled: Vec<Duration> = known.iter().chain(&unknown).copied().collect();
        let pooled_median = median(&mut pooled);
        let mut deviations: Vec<Duration> =
            pooled.iter().map(|d| d.abs_diff(pooled_median)).collect();
        let mad = median(&mut deviations);
        let (mk, mu) = (median(&mut known), median(&mut unknown));
        let diff = mk.abs_diff(mu);
        let se = mad.mul_f64(1.2533 * 1.4826 / (SAMPLES as f64).sqrt());
        let tolerance = (se * 5).max(pooled_median / 20);
        last = format!(
            "round {round}: median known {mk:?}, unknown {mu:?}, difference {diff:?}, \
             tolerance {tolerance:?} (5 SE {:?}; MAD {mad:?}, pooled median {pooled_median:?}, \
             {SAMPLES} samples each)",
            se * 5
        );
        println!("login timing: {last}");
        if diff <= tolerance {
            return;
        }
    }
    panic!("known and unknown user challenges differ in time in every round; last: {last}");
}
