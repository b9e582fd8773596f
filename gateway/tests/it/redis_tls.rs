//! Nodes on a TLS-only `redis-server` (certificates made at test time), and
//! on a plain one through an ACL user, a password and a database index.

use crate::common::{Gateway, Redis, TlsFiles, eventually, herald};
use serde_json::json;
use std::process::Command;

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

async fn a_publication_crosses_nodes(a: &Gateway, b: &Gateway) {
    for gw in [a, b] {
        eventually("node ready", || async { gw.ready().await == 200 }).await;
    }
    let mut sub = b.connected().await;
    sub.subscribe("tls-room").await;
    let (status, body) = a.publish("tls-room", "hello", json!({"n": 1})).await;
    assert_eq!(status, 200, "{body}");
    let m = sub.message().await;
    assert_eq!(m["data"], json!({"n": 1}), "{m}");
}

#[tokio::test]
async fn nodes_on_rediss_with_a_ca_file_carry_publications() {
    let files = TlsFiles::generate();
    let redis = Redis::start_tls(&files, false);
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let args = ["--redis-url", &url, "--redis-tls-ca-file", path(&files.ca)];
    let (a, b) = (herald().start(&args), herald().start(&args));
    a_publication_crosses_nodes(&a, &b).await;
}

#[tokio::test]
async fn a_ca_that_does_not_verify_redis_refuses_to_start() {
    let files = TlsFiles::generate();
    let other = TlsFiles::generate();
    let redis = Redis::start_tls(&files, false);
    let err = herald().fail_to_start(
        &[
            "--redis-url",
            &redis.url(),
            "--redis-tls-ca-file",
            path(&other.ca),
        ],
        &[],
    );
    let want = format!(
        "Redis TLS: the server's certificate does not verify against CA file {}",
        other.ca.display()
    );
    assert!(err.contains(&want), "{err}");
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let files = TlsFiles::generate();
    let redis = Redis::start_tls(&files, true);
    let url = redis.url();
    let with_cert = [
        "--redis-url",
        &url,
        "--redis-tls-ca-file",
        path(&files.ca),
        "--redis-tls-cert-file",
        path(&files.client_cert),
        "--redis-tls-key-file",
        path(&files.client_key),
    ];
    let (a, b) = (herald().start(&with_cert), herald().start(&with_cert));
    a_publication_crosses_nodes(&a, &b).await;
    // Without one, Redis ends the handshake (TLS 1.3 alert
    // `certificate_required`): the node refuses to start.
    let err = herald().fail_to_start(
        &["--redis-url", &url, "--redis-tls-ca-file", path(&files.ca)],
        &[],
    );
    assert!(err.contains("Redis TLS: "), "{err}");
    assert!(err.contains("requires a client certificate"), "{err}");
    // A key without its certificate is a configuration problem.
    let err = herald().fail_to_start(
        &[
            "--redis-url",
            &url,
            "--redis-tls-key-file",
            path(&files.client_key),
        ],
        &[],
    );
    assert!(err.contains("set both or neither"), "{err}");
}

#[tokio::test]
async fn an_acl_user_password_and_database_index_are_honoured_and_hidden() {
    let redis = Redis::start();
    assert_eq!(
        redis.cmd(&[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">s3cret-pw",
            "~*",
            "&*",
            "+@all"
        ]),
        "+OK"
    );
    let url = format!("redis://app:s3cret-pw@127.0.0.1:{}/3", redis.port);
    let (a, b) = (
        herald().start(&["--redis-url", &url]),
        herald().start(&["--redis-url", &url]),
    );
    a_publication_crosses_nodes(&a, &b).await;
    // The channel's state went to database 3, as user `app`.
    let cli = |db: &str| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "-n", db, "--no-auth-warning"])
            .args(["--user", "app", "--pass", "s3cret-pw", "DBSIZE"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_ne!(cli("3"), "0", "keys in database 3");
    assert_eq!(cli("0"), "0", "nothing in database 0");
    let clients = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "CLIENT", "LIST"])
        .output()
        .expect("redis-cli");
    let clients = String::from_utf8_lossy(&clients.stdout);
    assert!(
        clients.contains("db=3") && clients.contains("user=app"),
        "{clients}"
    );
    for gw in [&a, &b] {
        assert!(!gw.logs().contains("s3cret-pw"), "password in the logs");
    }

    // A wrong password: the node starts, is not ready, says why, and keeps
    // the password out of its logs.
    let wrong = format!("redis://app:not-it@127.0.0.1:{}/3", redis.port);
    let c = herald().start(&["--redis-url", &wrong]);
    eventually("the refusal is logged", || async {
        c.log_contains("Password authentication failed").await
    })
    .await;
    assert_eq!(c.ready().await, 503);
    assert!(!c.logs().contains("not-it"), "{}", c.logs());

    // `herald config show` hides it too.
    let out = herald()
        .command()
        .args(["config", "show", "--redis-url", &url])
        .output()
        .expect("config show");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(
        shown.contains("redis://app:<redacted>@127.0.0.1"),
        "{shown}"
    );
}
