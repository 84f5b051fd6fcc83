//! The back office's OpenAPI document (`/openapi.json`, generated from the code) fuzzed
//! with schemathesis against a running switch with real PostgreSQL, Redis and banks: no
//! answer is a 5xx and every answer matches the document (status, content type, schema).
//!
//! Needs `schemathesis` (PyPI): installed here with pip when missing.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use system_tests::switchyard::{World, WorldOptions, http_call};

const SUPER_TOKEN: &str = "test-superadmin-token-0123456789";

/// The schemathesis command, installing it with pip when it is not on PATH.
fn schemathesis() -> String {
    let found = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found("schemathesis") {
        let pip = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "schemathesis"])
            .status()
            .expect("python3 -m pip");
        assert!(pip.success(), "pip install schemathesis failed");
    }
    assert!(
        found("schemathesis"),
        "schemathesis is not on PATH after pip install"
    );
    "schemathesis".to_string()
}

// Proves the generated document is OpenAPI 3.1 naming every /v1 route, and that
// schemathesis finds no server error and no answer outside the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_holds_under_fuzzing() {
    let st = schemathesis();
    let extra = format!(
        "\n[admin]\naddr = \"127.0.0.1:0\"\ntokens = [{{ token = \"{SUPER_TOKEN}\", role = \"superadmin\" }}]\n"
    );
    let world = World::new(
        "bo_openapi",
        WorldOptions {
            extra_config: extra,
            ..Default::default()
        },
    );
    let mut sw = world.start_switch(1);
    let ready = sw.process.stdout().seen().last().cloned().unwrap();
    let v: Value = serde_json::from_str(&ready).unwrap();
    let admin: SocketAddr = v["admin"].as_str().unwrap().parse().unwrap();
    let doc = http_call(admin, None, "GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/login",
        "/v1/transactions",
        "/v1/refund-requests/{id}/{verb}",
        "/v1/audit",
        "/v1/transactions/{rrn}/captures",
        "/v1/transactions/{rrn}/voids",
        "/v1/saf",
        "/v1/saf/{id}/discard",
        "/v1/api-keys/{id}",
        "/v1/accounts/{username}/{switch}",
        "/v1/routes",
        "/v1/routes/{id}",
        "/v1/links",
        "/v1/links/{name}/{verb}",
        "/v1/settlement",
        "/v1/ledger/balances",
        "/v1/overview",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }

    let url = format!("http://{admin}/openapi.json");
    let auth = format!("Authorization: Bearer {SUPER_TOKEN}");
    // schemathesis keeps a cache in its working directory: under target/, not the tree.
    let work = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new(&st)
        .current_dir(&work)
        .args([
            "run",
            &url,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "20261201",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "-H",
            &auth,
        ])
        .output()
        .expect("run schemathesis");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    assert!(out.status.success(), "schemathesis found problems:\n{said}");
    drop(sw);
}
