//! Proxy hooks (issue 16 item 3): a real `herald` process asks a real HTTP
//! backend (`tests/fixtures/hook_backend.py`, Python's `http.server`) at
//! connect, subscribe, emit and refresh. Every hook's allow, deny, rewrite,
//! timeout and backend-down case; the request the backend sees (node id,
//! forwarded headers, `traceparent`); the outcome metrics.

use crate::common::{Backend, Client, Gateway, herald};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Headers every test client sends at upgrade; `x-private` is not forwarded.
const HEADERS: &[(&str, &str)] = &[
    ("user-agent", "hooks-test"),
    ("cookie", "sid=42"),
    ("x-tenant", "acme"),
    ("x-private", "secret"),
];

fn backend() -> Backend {
    Backend::python(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hook_backend.py"))
}

/// A config file with every hook at `base`; namespace `room` opts in to
/// the subscribe and publish hooks, `news` does not.
fn config(base: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "herald-hooks-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("herald.toml");
    let toml = format!(
        "[hooks]\n\
         connect_url = \"{base}/connect\"\n\
         subscribe_url = \"{base}/subscribe\"\n\
         publish_url = \"{base}/publish\"\n\
         refresh_url = \"{base}/refresh\"\n\
         timeout = \"500ms\"\n\
         forward_headers = [\"cookie\", \"user-agent\", \"x-tenant\"]\n\
         [namespaces.room]\n\
         subscribe_hook = true\n\
         publish_hook = true\n\
         client_emit = true\n\
         [namespaces.news]\n\
         client_emit = true\n"
    );
    std::fs::write(&path, toml).expect("write config");
    path
}

/// A node whose hooks call `base`, exporting traces to `otlp` (so hook
/// calls carry a `traceparent`).
fn node(base: &str, otlp: &str) -> Gateway {
    let cfg = config(base);
    herald().start_env(
        &[
            "--config",
            cfg.to_str().expect("path"),
            "--node-id",
            "hook-node",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
}

fn start() -> (Backend, Gateway) {
    let b = backend();
    let gw = node(&b.url(""), &b.url(""));
    (b, gw)
}

async fn open(gw: &Gateway) -> Client {
    Client::try_open(gw.public, None, HEADERS)
        .await
        .expect("upgrade")
}

/// Connects with `token` (the backend reads it) and returns the reply.
async fn connect(gw: &Gateway, token: &str) -> (Client, Value) {
    let mut c = open(gw).await;
    let r = c.request(json!({"op":"connect","token":token})).await;
    (c, r)
}

/// The hook requests the backend received on `path`.
async fn requests(b: &Backend, path: &str) -> Vec<Value> {
    let all = b.get_json("/requests").await;
    all.as_array()
        .expect("array")
        .iter()
        .filter(|r| r["path"] == path)
        .cloned()
        .collect()
}

/// Reads until the server closes: the close code and the `disconnect` notice.
async fn closed(c: &mut Client) -> (u16, Value) {
    let (code, notice) = c.closed().await;
    (code, notice.unwrap_or(Value::Null))
}

#[tokio::test]
async fn connect_allow_names_the_user_and_subscribes_the_backends_channels() {
    let (b, gw) = start();
    let (mut c, r) = connect(&gw, "allow-alice").await;
    assert_eq!(r["op"], "connected", "{r}");
    assert_eq!(r["user"], "alice");
    let exp = r["expires_at"].as_u64().expect("expires_at");
    assert!(exp > herald::clock::now_secs() + 3000, "{r}");
    // The backend's channel comes as a `subscribed` without an id.
    let s = c.recv().await;
    assert_eq!(s["op"], "subscribed", "{s}");
    assert_eq!(s["channel"], "auto:alice");
    assert!(s.get("id").is_none(), "{s}");
    let (status, _) = gw.publish("auto:alice", "hello", json!({"n": 1})).await;
    assert_eq!(status, 200);
    let m = c.message().await;
    assert_eq!(m["data"], json!({"n": 1}));

    // What the backend saw: node, session, transport, forwarded headers
    // (and only those), the token, and the trace context.
    let reqs = requests(&b, "/connect").await;
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let req = &reqs[0];
    let body = &req["body"];
    assert_eq!(body["node"], "hook-node");
    assert_eq!(body["session"], r["session"]);
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["user"], Value::Null);
    assert_eq!(body["token"], "allow-alice");
    assert_eq!(
        body["headers"],
        json!({"cookie": "sid=42", "user-agent": "hooks-test", "x-tenant": "acme"})
    );
    assert_eq!(req["headers"]["content-type"], "application/json");
    let tp = req["headers"]["traceparent"].as_str().unwrap_or_default();
    assert!(
        tp.starts_with("00-") && tp.len() == 55,
        "traceparent: {req}"
    );
}

#[tokio::test]
async fn connect_without_a_token_is_still_asked_and_anonymous_headers_decide() {
    let (_b, gw) = start();
    let mut c = open(&gw).await;
    let r = c.request(json!({"op":"connect"})).await;
    assert_eq!(r["op"], "connected", "{r}");
    assert_eq!(
        r["user"], "anon-hooks-test",
        "the backend read the user-agent"
    );
}

#[tokio::test]
async fn connect_deny_closes_with_the_backends_code() {
    let (_b, gw) = start();
    for (token, code, error) in [
        ("deny-4500", 4500, "unauthorized"),
        ("deny-4504", 4504, "too_many_connections"),
        ("deny-forbidden", 4501, "forbidden"),
        // A reconnect code is clamped into 4500-4999.
        ("deny-4000", 4501, "forbidden"),
    ] {
        let (mut c, r) = connect(&gw, token).await;
        assert_eq!(r["op"], "error", "{r}");
        assert_eq!(r["code"], error, "{token}: {r}");
        assert_eq!(r["message"], "go away");
        let (got, notice) = closed(&mut c).await;
        assert_eq!(got, code, "{token}");
        assert_eq!(notice["reconnect"], false, "{notice}");
    }
}

#[tokio::test]
async fn connect_fails_closed_with_a_reconnect_code_on_timeout_500_and_junk() {
    let (_b, gw) = start();
    for (token, says) in [
        ("slow", "did not answer within 500ms"),
        ("fail", "HTTP 500"),
        ("junk", "answer is not valid"),
    ] {
        let started = Instant::now();
        let (mut c, r) = connect(&gw, token).await;
        assert_eq!(r["op"], "error", "{r}");
        assert_eq!(r["code"], "unavailable", "{token}: {r}");
        assert!(r["message"].as_str().expect("msg").contains(says), "{r}");
        let (code, notice) = closed(&mut c).await;
        assert_eq!(code, 4000, "{token}");
        assert_eq!(notice["reconnect"], true, "{notice}");
        assert!(started.elapsed() < Duration::from_secs(2), "{token}");
    }
    assert_eq!(
        gw.metric("herald_hook_requests_total{hook=\"connect\",outcome=\"timeout\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("herald_hook_requests_total{hook=\"connect\",outcome=\"error\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn backend_down_fails_closed() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let gw = node(&base, &base);
    let (mut c, r) = connect(&gw, "allow-dave").await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(
        r["message"].as_str().expect("msg").contains("unreachable"),
        "{r}"
    );
    assert_eq!(closed(&mut c).await.0, 4000);
    assert_eq!(
        gw.metric("herald_hook_requests_total{hook=\"connect\",outcome=\"error\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn subscribe_hook_allows_denies_and_fails_closed() {
    let (b, gw) = start();
    let (mut c, r) = connect(&gw, "allow-bob").await;
    assert_eq!(r["op"], "connected", "{r}");
    assert_eq!(c.recv().await["channel"], "auto:bob");
    let r = c
        .request(json!({"op":"subscribe","channel":"room:a","data":{"seat":3}}))
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    let r = c
        .request(json!({"op":"subscribe","channel":"room:deny"}))
        .await;
    assert_eq!(r["op"], "error", "{r}");
    assert_eq!(r["code"], "forbidden");
    assert_eq!(r["message"], "not on room:deny");
    let started = Instant::now();
    let r = c
        .request(json!({"op":"subscribe","channel":"room:slow"}))
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Outside the opted-in namespace the backend is not asked.
    c.subscribe("news:x").await;
    let reqs = requests(&b, "/subscribe").await;
    let channels: Vec<&str> = reqs
        .iter()
        .map(|r| r["body"]["channel"].as_str().expect("channel"))
        .collect();
    assert_eq!(channels, ["room:a", "room:deny", "room:slow"]);
    let first = &reqs[0]["body"];
    assert_eq!(first["user"], "bob");
    assert_eq!(first["data"], json!({"seat": 3}));
    assert_eq!(first["node"], "hook-node");
    assert_eq!(first["headers"]["x-tenant"], "acme");
}

#[tokio::test]
async fn publish_hook_allows_denies_rewrites_and_fails_closed() {
    let (b, gw) = start();
    let (mut sub, _) = connect(&gw, "allow-reader").await;
    sub.recv().await;
    for ch in ["room:a", "room:rewrite"] {
        sub.subscribe(ch).await;
    }
    let (mut c, _) = connect(&gw, "allow-writer").await;
    c.recv().await;
    c.subscribe("room:a").await;
    c.subscribe("room:rewrite").await;

    let r = c
        .request(json!({"op":"emit","channel":"room:a","event":"said","data":{"t":"hi"}}))
        .await;
    assert_eq!(r["op"], "emitted", "{r}");
    let m = sub.message().await;
    assert_eq!(
        (m["event"].clone(), m["data"].clone()),
        (json!("said"), json!({"t":"hi"}))
    );

    let r = c
        .request(json!({"op":"emit","channel":"room:rewrite","event":"said","data":{"t":"raw"}}))
        .await;
    assert_eq!(r["op"], "emitted", "{r}");
    let m = sub.message().await;
    assert_eq!(m["channel"], "room:rewrite");
    assert_eq!(m["event"], "rewritten");
    assert_eq!(m["data"], json!({"was": {"t": "raw"}}));

    let r = c
        .request(json!({"op":"emit","channel":"room:deny","event":"said","data":1}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(r["message"], "not on room:deny");
    let r = c
        .request(json!({"op":"emit","channel":"room:slow","event":"said","data":1}))
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");

    let reqs = requests(&b, "/publish").await;
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    let first = &reqs[0]["body"];
    assert_eq!(first["user"], "writer");
    assert_eq!(first["channel"], "room:a");
    assert_eq!(first["event"], "said");
    assert_eq!(first["data"], json!({"t": "hi"}));

    // Every outcome counted.
    for (outcome, n) in [
        ("allow", 1.0),
        ("rewrite", 1.0),
        ("deny", 1.0),
        ("timeout", 1.0),
    ] {
        let name = format!("herald_hook_requests_total{{hook=\"publish\",outcome=\"{outcome}\"}}");
        assert_eq!(gw.metric(&name).await, n, "{name}");
    }
    assert_eq!(
        gw.metric("herald_hook_duration_seconds_count{hook=\"publish\"}")
            .await,
        4.0
    );
    assert_eq!(
        gw.metric("herald_hook_requests_total{hook=\"connect\",outcome=\"allow\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn refresh_hook_extends_the_connection() {
    let (b, gw) = start();
    let (mut c, r) = connect(&gw, "allow-carol").await;
    let before = r["expires_at"].as_u64().expect("expires_at");
    let r = c.request(json!({"op":"refresh"})).await;
    assert_eq!(r["op"], "refreshed", "{r}");
    let after = r["expires_at"].as_u64().expect("expires_at");
    assert!(after >= before + 3000, "{before} -> {after}");
    let reqs = requests(&b, "/refresh").await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["body"]["user"], "carol");
    assert_eq!(
        gw.metric("herald_hook_requests_total{hook=\"refresh\",outcome=\"allow\"}")
            .await,
        1.0
    );
}
