//! HTTP fuzzing with a tool nobody here wrote: Schemathesis reads the server's own
//! `/_efs/openapi.json`, generates requests for every operation (valid and invalid ones), sends
//! them as a logged-in user, and checks every answer: no 5xx, status codes, content types,
//! headers and bodies as the document says (bodies of the JSON control routes; file content is
//! the caller's bytes).
//!
//! Schemathesis lives in a Python venv that `scripts/test.sh` creates (`target/schemathesis-venv`);
//! `EFS_SCHEMATHESIS` names another executable. Budget: twice `BUDGET_SECS` of generation, so the
//! whole test stays under three minutes in CI.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// Schemathesis' time budget for each of its two runs (`--max-time`), seconds.
const BUDGET_SECS: &str = "55";
/// Test cases per operation and phase at most (`--max-examples`).
const MAX_EXAMPLES: &str = "40";

fn schemathesis() -> String {
    if let Ok(p) = std::env::var("EFS_SCHEMATHESIS") {
        return p;
    }
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/schemathesis-venv/bin/schemathesis");
    assert!(
        p.exists(),
        "schemathesis is not installed at {}: run scripts/test.sh (it creates the venv), or set \
         EFS_SCHEMATHESIS to its executable",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_mismatch_with_the_openapi_document() {
    let bin = schemathesis();
    let srv = TestServer::start(&[]);
    srv.create_fs("main");
    let key = srv.create_user("alice", &["main"], false);
    let token = srv.login("alice", &key, None).await;
    // Something to read, list, move and delete, besides what Schemathesis writes itself.
    srv.put_ok("/report.txt", &token, "quarterly figures").await;
    srv.put_ok("/docs/notes.txt", &token, "minutes").await;

    // The control routes and directories answer JSON: every check, body schemas included.
    // Files are the caller's bytes served with the Content-Type they were stored with (`*/*`,
    // binary, in the document), which Schemathesis parses all the same (an empty or cut JSON
    // file fails its schema check): every check but the body schema.
    let all = "not_a_server_error,status_code_conformance,content_type_conformance,\
               response_headers_conformance,response_schema_conformance";
    let files = "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance";
    for (what, filter, checks) in [
        ("control and directory routes", "--include-path-regex", all),
        ("file routes", "--exclude-path-regex", files),
    ] {
        let json_routes = r"^/(_efs/|\{dir\}/$)";
        run_schemathesis(&bin, &srv, &token, what, &[filter, json_routes], checks);
    }
    // The server is still healthy after all that.
    let r = srv
        .client
        .get(srv.url("/_efs/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Runs Schemathesis on the operations `filter` selects, half the budget each; panics (after
/// printing its summary) when it reports a failure.
fn run_schemathesis(
    bin: &str,
    srv: &TestServer,
    token: &str,
    what: &str,
    filter: &[&str],
    checks: &str,
) {
    let report = srv
        .dir
        .path()
        .join(format!("schemathesis-{}", what.replace(' ', "-")));
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let started = Instant::now();
    let out = Command::new(bin)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(srv.url("/_efs/openapi.json"))
        .arg("--url")
        .arg(&srv.base)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--tls-verify")
        .arg(srv.cert_file())
        .args(filter)
        .args([
            "--checks",
            checks,
            "--max-examples",
            MAX_EXAMPLES,
            "--max-time",
            BUDGET_SECS,
            "--seed",
            "20261201",
            // One worker: with two, Hypothesis (inside Schemathesis) failed at random in its
            // own source inspection ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        // Schemathesis and Hypothesis keep caches in the working directory: not in the tree.
        .current_dir(srv.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The summary, whatever the outcome (the run's time is visible in the CI log).
    println!(
        "schemathesis on the {what} ran {:.0?} and exited {:?}\n{stdout}\n{stderr}",
        started.elapsed(),
        out.status.code()
    );
    assert!(
        out.status.success(),
        "schemathesis reported failures on the {what} (exit {:?}); its summary is above",
        out.status.code()
    );
    // It did test something: a run that reached no operation also exits 0.
    assert!(
        stdout.contains("passed") && !stdout.contains("Tested: 0"),
        "schemathesis tested nothing on the {what}:\n{stdout}"
    );
}
