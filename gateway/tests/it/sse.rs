//! Server-Sent Events (`GET /sse`) against real `herald serve` processes:
//! `curl -N`, the standard-library Python client in
//! `tests/fixtures/sse_client.py`, and a raw HTTP reader below (for what a
//! client library hides: a reader that stops reading, the farewell).

use crate::common::{Gateway, HaProxy, Redis, all_ready, eventually, herald};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

const SECRET: &str = "integration-test-hs256-secret-32-bytes+";
const WAIT: Duration = Duration::from_secs(10);

fn token(sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": herald::clock::now_secs() + 600});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn sse_connections(gw: &Gateway) -> f64 {
    gw.metric(r#"herald_connections{protocol="sse"}"#).await
}

/// A spawned reader (curl or the Python client), killed by PID on drop.
struct Reader {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Reader {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn reader");
        let out = child.stdout.take().expect("stdout");
        Self {
            child,
            lines: BufReader::new(out).lines(),
        }
    }

    fn curl(url: &str) -> Self {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSN", "-i", url]);
        Self::spawn(cmd)
    }

    fn python(url: &str, last_event_id: Option<&str>) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sse_client.py");
        let mut cmd = Command::new("python3");
        cmd.args([script, url]);
        if let Some(id) = last_event_id {
            cmd.args(["--last-event-id", id]);
        }
        Self::spawn(cmd)
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("not the end")
    }

    /// The Python client's next JSON line.
    async fn json(&mut self) -> Value {
        let l = self.line().await;
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
    }

    /// The next event the Python client printed (skipping `retry`).
    async fn event(&mut self) -> Value {
        loop {
            let v = self.json().await;
            if v.get("event").is_some() {
                return v;
            }
        }
    }

    async fn kill(mut self) {
        // By PID, as spawned.
        let pid = self.child.id().expect("running");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let _ = self.child.wait().await;
    }
}

#[tokio::test]
async fn curl_gets_each_publication_as_one_event_with_every_channel_position() {
    let gw = herald().start(&[]);
    let mut curl = Reader::curl(&format!(
        "http://{}/sse?channel=reviews&channel=user:7",
        gw.public
    ));
    let mut head = Vec::new();
    loop {
        let l = curl.line().await;
        if l.trim().is_empty() {
            break;
        }
        head.push(l.trim().to_ascii_lowercase());
    }
    assert_eq!(head[0], "http/1.1 200 ok", "{head:?}");
    for h in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
    ] {
        assert!(head.iter().any(|l| l == h), "{h} in {head:?}");
    }
    assert_eq!(curl.line().await, ": herald");
    let retry: u64 = curl.line().await["retry: ".len()..].parse().expect("ms");
    assert!((1000..=3000).contains(&retry), "retry {retry}");
    let id = curl.line().await;
    assert!(
        id.starts_with("id: reviews=") && id.contains(":0,user%3A7="),
        "{id}"
    );
    assert_eq!(curl.line().await, "");
    eventually("the stream is subscribed", || async {
        sse_connections(&gw).await == 1.0
    })
    .await;
    let (_, r) = gw.publish("reviews", "added", json!({"stars": 5})).await;
    let epoch = r["epoch"].as_str().expect("epoch").to_owned();
    gw.publish("user:7", "note", json!("hi\nthere")).await;
    assert_eq!(curl.line().await, "event: added");
    assert_eq!(curl.line().await, r#"data: {"stars":5}"#);
    let id1 = curl.line().await;
    assert!(
        id1.starts_with(&format!("id: reviews={epoch}:1,user%3A7=")),
        "{id1}"
    );
    assert!(id1.ends_with(":0"), "{id1}");
    assert_eq!(curl.line().await, "");
    assert_eq!(curl.line().await, "event: note");
    assert_eq!(curl.line().await, r#"data: "hi\nthere""#);
    let id2 = curl.line().await;
    assert!(
        id2.starts_with(&format!("id: reviews={epoch}:1,user%3A7=")),
        "{id2}"
    );
    assert!(id2.ends_with(":1"), "{id2}");
    assert_eq!(
        gw.metric(r#"herald_messages_delivered_total{protocol="sse"}"#)
            .await,
        2.0
    );
    curl.kill().await;
    eventually("a gone reader's session ends", || async {
        sse_connections(&gw).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn last_event_id_resumes_on_another_node_after_kill_9() {
    let redis = Redis::start();
    let mut nodes: Vec<Gateway> = (0..2)
        .map(|i| {
            herald().start(&[
                "--redis-url",
                &redis.url(),
                "--node-id",
                &format!("sse-{i}"),
            ])
        })
        .collect();
    all_ready(&nodes).await;
    // One URL for the client, before and after the kill, as in a deployment.
    let lb = HaProxy::start(&nodes, false);
    let url = format!("http://{}/sse?channel=feed&channel=other", lb.addr);
    let mut py = Reader::python(&url, None);
    assert_eq!(py.json().await["status"], 200);
    eventually("subscribed on one node", || async {
        sse_connections(&nodes[0]).await + sse_connections(&nodes[1]).await == 1.0
    })
    .await;
    // The node holding the stream, and the other one.
    let held = usize::from(sse_connections(&nodes[0]).await != 1.0);
    for i in 1..=3 {
        nodes[1 - held]
            .publish("feed", "tick", json!({"i": i}))
            .await;
    }
    let mut last = String::new();
    for i in 1..=3 {
        let e = py.event().await;
        assert_eq!(
            (e["event"].as_str(), e["data"].clone()),
            (Some("tick"), json!(format!("{{\"i\":{i}}}")))
        );
        last = e["id"].as_str().expect("id").to_owned();
    }
    // That node dies (kill -9); publications go on through the other one.
    drop(nodes.remove(held));
    for i in 4..=6 {
        nodes[0].publish("feed", "tick", json!({"i": i})).await;
    }
    nodes[0].publish("other", "x", json!(1)).await;
    py.kill().await;
    // The same URL again, until HAProxy has a live node for it.
    let deadline = Instant::now() + WAIT;
    let mut py = loop {
        let mut py = Reader::python(&url, Some(&last));
        let head = py.json().await;
        if head["status"] == 200 {
            break py;
        }
        // Refused (HAProxy had no live node for it yet): the client has
        // exited; ask again.
        assert!(
            Instant::now() < deadline,
            "no stream through HAProxy: {head}"
        );
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = py.event().await;
        assert_ne!(e["event"], "unrecovered", "{e}");
        got.push((
            e["event"].as_str().unwrap_or("").to_owned(),
            e["data"].as_str().unwrap_or("").to_owned(),
        ));
    }
    assert_eq!(
        got,
        [
            ("tick".to_owned(), r#"{"i":4}"#.to_owned()),
            ("tick".to_owned(), r#"{"i":5}"#.to_owned()),
            ("tick".to_owned(), r#"{"i":6}"#.to_owned()),
            ("x".to_owned(), "1".to_owned()),
        ],
        "exactly the missed publications, in order per channel"
    );
    // Then live.
    nodes[0].publish("feed", "tick", json!({"i": 7})).await;
    let e = py.event().await;
    assert_eq!(e["data"], r#"{"i":7}"#);
    assert!(e["id"].as_str().expect("id").contains(":7"), "{e}");
    py.kill().await;
}

#[tokio::test]
async fn a_position_history_cannot_cover_gets_event_unrecovered() {
    let gw = herald().start(&[]);
    gw.publish("c", "e", json!(1)).await;
    let url = format!("http://{}/sse?channel=c&channel=d", gw.public);
    // An epoch this node never had for `c`; no position at all for `d`.
    let mut py = Reader::python(&url, Some("c=nosuchepoch0:1"));
    assert_eq!(py.json().await["status"], 200);
    let e = py.event().await;
    assert_eq!(e["event"], "unrecovered");
    let data: Value = serde_json::from_str(e["data"].as_str().expect("data")).expect("json");
    assert_eq!(data, json!({"channels": ["c", "d"]}));
    // The stream goes on live from where each channel is now.
    eventually("subscribed", || async { sse_connections(&gw).await == 1.0 }).await;
    gw.publish("c", "e", json!(2)).await;
    let e = py.event().await;
    assert_eq!(
        (e["event"].as_str(), e["data"].as_str()),
        (Some("e"), Some("2"))
    );
    py.kill().await;
}

/// Sends a raw `GET` and returns the socket and the response head.
async fn raw_get(gw: &Gateway, path: &str, headers: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gw.public).await.expect("connect");
    // `close`: a refusal's body then ends with the connection.
    let req = format!("GET {path} HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("head in time")
            .expect("read");
        assert!(
            n == 1,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Reads the rest of a response (until the server closes or `WAIT`).
async fn rest(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut b = [0u8; 4096];
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[..n]);
            if out.ends_with(b"\r\n0\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn refused_streams_get_the_reason_as_an_http_status() {
    let gw = herald().start(&[
        "--jwt-secret",
        SECRET,
        "--allowed-origin",
        "https://app.example",
    ]);
    let (mut s, head) = raw_get(&gw, "/sse?channel=c", "").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    let body = rest(&mut s).await;
    assert!(body.contains("unauthorized: "), "a clear message: {body}");
    let (mut s, head) = raw_get(&gw, "/sse?channel=c&token=not-a-jwt", "").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(rest(&mut s).await.contains("unauthorized"));
    let (_, head) = raw_get(&gw, "/sse", "").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let many: String = (0..200).map(|i| format!("&channel=c{i}")).collect();
    let (mut s, head) = raw_get(&gw, &format!("/sse?{}", &many[1..]), "").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(rest(&mut s).await.contains("at most 199 channels"));
    let (_, head) = raw_get(&gw, "/sse?channel=c", "Origin: https://evil.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // Each place a token may be.
    let t = token("ann");
    for (path, headers) in [
        (format!("/sse?channel=c&token={t}"), String::new()),
        (
            "/sse?channel=c".to_owned(),
            format!("Cookie: a=b; herald_token={t}\r\n"),
        ),
        (
            "/sse?channel=c".to_owned(),
            format!("Authorization: Bearer {t}\r\nOrigin: https://app.example\r\n"),
        ),
    ] {
        let (_, head) = raw_get(&gw, &path, &headers).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{headers}: {head}");
        if headers.contains("Origin") {
            assert!(
                head.to_ascii_lowercase()
                    .contains("access-control-allow-origin: https://app.example"),
                "{head}"
            );
        }
    }
    eventually("refused and closed streams hold nothing", || async {
        gw.metric("herald_connections").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn streams_count_against_the_per_user_limit() {
    let gw = herald().start(&["--jwt-secret", SECRET, "--max-connections-per-user", "1"]);
    let auth = format!("Authorization: Bearer {}\r\n", token("bob"));
    let (_held, head) = raw_get(&gw, "/sse?channel=c", &auth).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut s, head) = raw_get(&gw, "/sse?channel=c", &auth).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(rest(&mut s).await.contains("too_many_connections: "));
    // Another user is not affected.
    let other = format!("Authorization: Bearer {}\r\n", token("eve"));
    let (_, head) = raw_get(&gw, "/sse?channel=c", &other).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn streams_count_against_max_connections() {
    let gw = herald().start(&["--max-connections", "1"]);
    let (_held, head) = raw_get(&gw, "/sse?channel=c", "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, head) = raw_get(&gw, "/sse?channel=c", "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut() {
    let gw = herald().start(&[
        "--outbound-queue-bytes",
        "262144",
        "--outbound-queue",
        "100000",
        "--history-size",
        "0",
    ]);
    let (mut stuck, head) = raw_get(&gw, "/sse?channel=big", "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    eventually("subscribed", || async { sse_connections(&gw).await == 1.0 }).await;
    // 20 MB, far past what kernel buffers absorb for a reader that stopped.
    let payload = "x".repeat(63_000);
    for _ in 0..320 {
        let (status, body) = gw.publish("big", "blob", json!(payload)).await;
        assert_eq!(status, 200, "{body}");
        if gw.metric("herald_slow_consumer_disconnects_total").await == 1.0 {
            break;
        }
    }
    eventually("cut as a slow consumer", || async {
        gw.metric("herald_slow_consumer_disconnects_total").await == 1.0
            && sse_connections(&gw).await == 0.0
    })
    .await;
    // The connection itself is dropped: reading what was buffered ends in EOF or a reset.
    let ended = tokio::time::timeout(WAIT, async {
        let mut b = vec![0u8; 1 << 16];
        loop {
            match stuck.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the socket is closed");
}

#[tokio::test]
async fn a_drain_ends_streams_with_a_farewell_and_heartbeats_come_meanwhile() {
    let mut gw = herald().start(&["--drain-timeout", "2s", "--ping-interval", "300ms"]);
    let (mut s, head) = raw_get(&gw, "/sse?channel=c", "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    gw.signal("TERM");
    let body = rest(&mut s).await;
    assert!(body.contains(": ping\n\n"), "heartbeats: {body}");
    assert!(
        body.contains("event: herald:disconnect\ndata: {\"op\":\"disconnect\",\"code\":4000"),
        "{body}"
    );
    assert!(body.ends_with("\r\n0\r\n\r\n"), "the response ends: {body}");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}
