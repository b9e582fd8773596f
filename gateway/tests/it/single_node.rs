//! One node on its embedded broker, driven through real sockets.

use crate::common::{eventually, herald, http, http_get, http_post, http_post_key, http_post_raw};
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn subscribe_emit_deliver_with_consecutive_offsets() {
    let gw = herald().start(&[]);
    let mut a = gw.client().await;
    let r = a.request(json!({"op":"connect"})).await;
    assert_eq!(r["op"], "connected");
    assert_eq!(r["node"], gw.node.as_str());
    assert_eq!(r["ping_interval_ms"], 25000);
    assert!(r["session"].as_str().is_some_and(|s| !s.is_empty()));

    let mut b = gw.connected().await;
    let sa = a.subscribe("chat").await;
    assert_eq!(sa["offset"], 0, "new channel starts at 0");
    let sb = b.subscribe("chat").await;
    assert_eq!(sb["epoch"], sa["epoch"]);

    for i in 1..=20u64 {
        let r = b
            .request(json!({"op":"emit","channel":"chat","event":"message","data":{"n":i}}))
            .await;
        assert_eq!(r["op"], "emitted", "{r}");
        assert_eq!(r["offset"], i);
        assert_eq!(r["epoch"], sa["epoch"]);
    }
    for c in [&mut a, &mut b] {
        for i in 1..=20u64 {
            let m = c.message().await;
            assert_eq!(m["channel"], "chat");
            assert_eq!(m["event"], "message");
            assert_eq!(m["data"], json!({"n": i}));
            assert_eq!(m["offset"], i, "in order, no gaps");
            assert_eq!(m["epoch"], sa["epoch"]);
        }
    }
    // A late subscriber starts from the latest offset.
    let mut late = gw.connected().await;
    assert_eq!(late.subscribe("chat").await["offset"], 20);

    // Sessions report what they wrote when they end: at least the 40 messages.
    drop((a, b, late));
    eventually("bytes sent are counted", || async {
        gw.metric("herald_bytes_sent_total").await >= 40.0 * 80.0
    })
    .await;
    assert!(gw.metric("herald_fanout_subscribers_count").await >= 20.0);
}

#[tokio::test]
async fn subscribe_is_idempotent_and_unsubscribe_stops_delivery() {
    let gw = herald().start(&[]);
    let mut c = gw.connected().await;
    c.subscribe("news").await;
    c.subscribe("news").await;
    assert_eq!(gw.metric("herald_subscriptions").await, 1.0);
    gw.publish("news", "a", json!(1)).await;
    assert_eq!(c.message().await["offset"], 1);
    // A second copy would come before the next publication on the channel.
    gw.publish("news", "a", json!(2)).await;
    assert_eq!(c.message().await["offset"], 2, "delivered once, not twice");

    let r = c
        .request(json!({"op":"unsubscribe","channel":"news"}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["channel"].as_str()),
        (Some("unsubscribed"), Some("news"))
    );
    assert!(r["reconnect_token"].is_string(), "{r}");
    assert_eq!(gw.metric("herald_channels").await, 0.0);
    let (status, body) = gw.publish("news", "a", json!(3)).await;
    assert_eq!((status, body["offset"].as_u64()), (200, Some(3)));
    // Unsubscribing again is harmless.
    let r = c
        .request(json!({"op":"unsubscribe","channel":"news"}))
        .await;
    assert_eq!(r["op"], "unsubscribed");
    // Offset 3 never reached the client: it would be queued ahead of this
    // reply and of the next publication.
    assert_eq!(c.subscribe("news").await["offset"], 3);
    gw.publish("news", "a", json!(4)).await;
    assert_eq!(c.message().await["offset"], 4, "nothing while unsubscribed");
}

#[tokio::test]
async fn http_publish_and_broadcast() {
    let gw = herald().start(&[]);
    let mut c = gw.connected().await;
    c.subscribe("a").await;
    c.subscribe("b").await;

    let (status, body) = gw.publish("a", "review_added", json!({"stars":5})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1);
    let m = c.message().await;
    assert_eq!(
        (m["channel"].clone(), m["data"].clone()),
        (json!("a"), json!({"stars":5}))
    );
    assert_eq!(m["epoch"], body["epoch"]);

    let (status, body) = http_post(
        gw.admin,
        "/api/v1/broadcast",
        &json!({"channels":["a","b","bad channel"],"event":"e","data":[1,2]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let res = body["results"].as_array().expect("results");
    assert_eq!(res[0]["channel"], "a");
    assert_eq!(res[0]["offset"], 2);
    assert_eq!(res[1]["offset"], 1);
    assert_eq!(res[2]["error"]["code"], "bad_request");
    let mut got: Vec<String> = Vec::new();
    for _ in 0..2 {
        let m = c.message().await;
        assert_eq!(m["data"], json!([1, 2]));
        got.push(m["channel"].as_str().expect("channel").to_owned());
    }
    got.sort();
    assert_eq!(got, ["a", "b"]);

    // The CLI goes through the same API.
    let out = herald()
        .command()
        .args(["publish", "a", "cli", r#"{"from":"cli"}"#, "--url"])
        .arg(format!("http://{}", gw.admin))
        .output()
        .expect("herald publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"offset\":3"));
    let m = c.message().await;
    assert_eq!(
        (m["event"].clone(), m["offset"].clone()),
        (json!("cli"), json!(3))
    );
}

#[tokio::test]
async fn api_errors_are_json_with_status() {
    let gw = herald().start(&["--max-payload", "1024"]);
    let cases = [
        ("not json", 400, "bad_request"),
        (
            r#"{"channel":"a","event":"e","extra":1}"#,
            400,
            "bad_request",
        ),
        (r#"{"channel":"","event":"e"}"#, 400, "bad_request"),
        (r#"{"channel":"a","event":""}"#, 400, "bad_request"),
    ];
    for (body, status, code) in cases {
        let (s, b) = http_post(gw.admin, "/api/v1/publish", body).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {b}"
        );
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let big = json!({"channel":"a","event":"e","data":"x".repeat(2000)}).to_string();
    let (s, b) = http_post(gw.admin, "/api/v1/publish", &big).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    let huge = json!({"channel":"a","event":"e","data":"x".repeat(200_000)}).to_string();
    let (s, b) = http_post(gw.admin, "/api/v1/publish", &huge).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    let (s, b) = http_post(
        gw.admin,
        "/api/v1/broadcast",
        r#"{"channels":[],"event":"e"}"#,
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("bad_request")));
    let (s, _) = http_post_raw(gw.admin, "/api/v1/nope", "{}").await;
    assert_eq!(s, 404);
    // Nothing invalid was published.
    let (_, ok) = gw.publish("a", "e", json!(null)).await;
    assert_eq!(ok["offset"], 1);
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_open() {
    let gw = herald().start(&["--max-payload", "1024", "--max-subscriptions", "2"]);
    let mut c = gw.client().await;

    // Before connect.
    let r = c.request(json!({"op":"subscribe","channel":"x"})).await;
    assert_eq!(r["code"], "not_connected", "{r}");
    let r = c.request(json!({"op":"ping"})).await;
    assert_eq!(r["op"], "pong", "ping works before connect");
    assert_eq!(
        c.ws_ping(b"are you there").await,
        b"are you there",
        "WebSocket pings are answered"
    );
    let r = c.request(json!({"op":"connect"})).await;
    assert_eq!(r["op"], "connected");
    let r = c.request(json!({"op":"connect"})).await;
    assert_eq!(r["code"], "bad_request");

    c.send_text("{this is not json").await;
    let r = c.recv().await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    assert!(
        r["message"]
            .as_str()
            .expect("message")
            .contains("malformed JSON"),
        "{r}"
    );

    c.send_text(r#"{"op":"fly","id":9}"#).await;
    let r = c.recv().await;
    assert_eq!(
        (r["id"].as_u64(), r["code"].as_str()),
        (Some(9), Some("bad_request"))
    );
    assert!(
        r["message"]
            .as_str()
            .expect("message")
            .contains("unknown op"),
        "{r}"
    );

    c.send_text(r#"{"id":10,"channel":"x"}"#).await;
    let r = c.recv().await;
    assert_eq!(
        (r["id"].as_u64(), r["code"].as_str()),
        (Some(10), Some("bad_request"))
    );

    c.send_text("[1,2,3]").await;
    assert_eq!(c.recv().await["code"], "bad_request");

    c.send_frame(Frame::binary(Payload::Borrowed(b"\x00\x01")))
        .await;
    assert_eq!(c.recv().await["code"], "bad_request");
    // A fragmented binary message is refused once, as a whole.
    c.send_frame(Frame::new(
        false,
        OpCode::Binary,
        None,
        Payload::Borrowed(b"\x00"),
    ))
    .await;
    c.send_frame(Frame::new(
        true,
        OpCode::Continuation,
        None,
        Payload::Borrowed(b"\x01"),
    ))
    .await;
    assert_eq!(c.recv().await["code"], "bad_request");

    for (cmd, code) in [
        (json!({"op":"subscribe"}), "bad_request"),
        (
            json!({"op":"subscribe","channel":"has space"}),
            "bad_request",
        ),
        (
            json!({"op":"subscribe","channel":"x".repeat(256)}),
            "bad_request",
        ),
        (json!({"op":"emit","channel":"x"}), "bad_request"),
        (
            json!({"op":"emit","channel":"x","event":"e".repeat(129)}),
            "bad_request",
        ),
        (
            json!({"op":"emit","channel":"x","event":"e","data":"y".repeat(1100)}),
            "payload_too_large",
        ),
    ] {
        let r = c.request(cmd.clone()).await;
        assert_eq!(
            (r["op"].as_str(), r["code"].as_str()),
            (Some("error"), Some(code)),
            "{cmd}: {r}"
        );
    }

    c.subscribe("one").await;
    c.subscribe("two").await;
    let r = c.request(json!({"op":"subscribe","channel":"three"})).await;
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    assert_eq!(r["channel"], "three");
    c.subscribe("two").await; // re-subscribing an existing channel is not a new one

    // Still fully usable.
    let r = c
        .request(json!({"op":"emit","channel":"one","event":"e","data":{"ok":true}}))
        .await;
    assert_eq!(r["op"], "emitted");
    assert_eq!(c.message().await["data"], json!({"ok":true}));
    assert!(gw.metric("herald_client_errors_total").await >= 12.0);
}

#[tokio::test]
async fn connect_timeout_closes_with_4502() {
    let gw = herald().start(&["--connect-timeout", "300ms"]);
    let mut c = gw.client().await;
    let (code, notice) = c.closed().await;
    assert_eq!(code, 4502);
    let n = notice.expect("disconnect notice");
    assert_eq!(
        (n["code"].as_u64(), n["reconnect"].as_bool()),
        (Some(4502), Some(false))
    );
}

#[tokio::test]
async fn invalid_utf8_is_a_protocol_error() {
    let gw = herald().start(&[]);
    let mut c = gw.connected().await;
    c.send_frame(Frame::text(Payload::Borrowed(b"{\"op\":\"\xff\"}")))
        .await;
    assert_eq!(c.closed().await.0, 4502);
}

#[tokio::test]
async fn missing_pong_closes_with_4002_and_pongs_keep_alive() {
    let gw = herald().start(&["--ping-interval", "200ms", "--pong-timeout", "300ms"]);
    let mut good = gw.connected().await;
    good.subscribe("x").await;
    // `good` answers in its own task, counting the rounds it outlives.
    good.auto_pong = false;
    let good = tokio::spawn(async move {
        for _ in 0..3 {
            assert_eq!(good.recv().await, json!({"op":"ping"}));
            good.send(json!({"op":"pong"})).await;
        }
        good
    });
    let mut bad = gw.connected().await;
    bad.auto_pong = false;
    assert_eq!(bad.recv().await, json!({"op":"ping"}));
    let (code, notice) = bad.closed().await;
    assert_eq!(code, 4002);
    assert_eq!(notice.expect("notice")["reconnect"], true);
    // The answering client outlived three ping rounds and is still served.
    let mut good = good.await.expect("good client answers pings");
    good.auto_pong = true;
    gw.publish("x", "e", json!(1)).await;
    assert_eq!(good.message().await["offset"], 1);
}

#[tokio::test]
async fn oversized_frames_close_with_4503() {
    let gw = herald().start(&["--max-payload", "1024"]);
    let mut c = gw.connected().await;
    let big = json!({"op":"emit","channel":"x","event":"e","data":"z".repeat(10_000)}).to_string();
    c.send_text(&big).await;
    let (code, notice) = c.closed().await;
    assert_eq!(code, 4503);
    assert_eq!(notice.expect("notice")["reconnect"], false);

    // The same size split in fragments is refused as well.
    let mut c = gw.connected().await;
    let chunk = "z".repeat(2000);
    c.send_frame(Frame::new(
        false,
        OpCode::Text,
        None,
        Payload::Borrowed(b"{\"op\":\"emit\",\"data\":\""),
    ))
    .await;
    for _ in 0..4 {
        c.send_frame(Frame::new(
            false,
            OpCode::Continuation,
            None,
            Payload::Borrowed(chunk.as_bytes()),
        ))
        .await;
    }
    assert_eq!(c.closed().await.0, 4503);

    // Fragments within the limit are reassembled.
    let mut c = gw.connected().await;
    let text = json!({"op":"ping","id":77}).to_string();
    let (a, b) = text.as_bytes().split_at(5);
    c.send_frame(Frame::new(false, OpCode::Text, None, Payload::Borrowed(a)))
        .await;
    c.send_frame(Frame::new(
        true,
        OpCode::Continuation,
        None,
        Payload::Borrowed(b),
    ))
    .await;
    assert_eq!(c.recv().await, json!({"op":"pong","id":77}));
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4001_and_others_keep_receiving() {
    let gw = herald().start(&["--outbound-queue", "16"]);
    let mut slow = gw.connected().await;
    let mut fast = gw.connected().await;
    slow.subscribe("firehose").await;
    fast.subscribe("firehose").await;

    // `slow` stops reading; `fast` reads everything while the node publishes.
    let payload = "p".repeat(16 * 1024);
    let total = 600u64;
    let admin = gw.admin;
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            let body =
                json!({"channel":"firehose","event":"e","data":{"i":i,"p":payload}}).to_string();
            let (s, _) = http_post(admin, "/api/v1/publish", &body).await;
            assert_eq!(s, 200);
        }
    });
    for i in 1..=total {
        let m = fast.message().await;
        assert_eq!(m["offset"], i, "healthy client gets everything in order");
    }
    publisher.await.expect("publisher");
    assert_eq!(
        gw.metric("herald_slow_consumer_disconnects_total").await,
        1.0
    );
    // Once it reads again, the slow client finds the 4001 notice after its backlog.
    let (code, notice) = slow.closed().await;
    assert_eq!(code, 4001, "{notice:?}");
    assert_eq!(notice.expect("notice")["reason"], "slow consumer");
}

#[tokio::test]
async fn sigterm_drains_clients_with_4000_and_exits_0() {
    let mut gw = herald().start(&["--drain-timeout", "2s"]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = gw.connected().await;
        c.subscribe("x").await;
        clients.push(c);
    }
    gw.signal("TERM");
    // While draining: not ready, and no new sessions.
    eventually("readyz reports draining", || async {
        http_get(gw.admin, "/readyz").await == (503, "draining\n".to_owned())
    })
    .await;
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.public
    );
    assert_eq!(
        http(gw.public, upgrade).await.0,
        503,
        "new WebSockets refused"
    );
    for c in &mut clients {
        let (code, notice) = c.closed().await;
        assert_eq!(code, 4000);
        let n = notice.expect("notice");
        assert_eq!(
            (n["reason"].as_str(), n["reconnect"].as_bool()),
            (Some("shutdown"), Some(true))
        );
    }
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn admin_listener_takes_the_api_off_the_public_port() {
    let gw = herald().start(&["--admin-listen", "127.0.0.1:0"]);
    assert_ne!(gw.public, gw.admin);
    let (s, _) = http_post_raw(gw.public, "/api/v1/publish", "{}").await;
    assert_eq!(s, 404, "publish API is not public");
    assert_eq!(http_get(gw.public, "/metrics").await.0, 404);
    assert_eq!(http_get(gw.admin, "/readyz").await.0, 200);
    assert_eq!(http_get(gw.admin, "/healthz").await.0, 200);
    let (s, page) = http_get(gw.public, "/").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("<html") || page.contains("<!doctype"),
        "demo page"
    );
    let (s, metrics) = http_get(gw.admin, "/metrics").await;
    assert_eq!(s, 200);
    assert!(metrics.contains("process_resident_memory_bytes"));
    let mut c = gw.connected().await;
    c.subscribe("x").await;
    let (s, _) = gw.publish("x", "e", json!(1)).await;
    assert_eq!(s, 200);
    assert_eq!(c.message().await["offset"], 1);
    eventually("connections gauge", || async {
        gw.metric("herald_connections").await == 1.0
    })
    .await;
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("herald.toml");
    std::fs::write(&file, "[session]\nping_intervl = \"5s\"\n").expect("write");
    let err = herald().fail_to_start(&["--config", file.to_str().expect("path")], &[]);
    assert!(err.contains("ping_intervl"), "{err}");

    let err = herald().fail_to_start(&[], &[("HERALD_LISTN", "127.0.0.1:1")]);
    assert!(err.contains("HERALD_LISTN"), "{err}");

    let err = herald().fail_to_start(&["--listen", "0.0.0.0:0"], &[]);
    assert!(err.contains("--allow-open"), "{err}");

    let err = herald().fail_to_start(&["--ping-interval", "0s"], &[]);
    assert!(err.contains("ping_interval"), "{err}");

    let err = herald().fail_to_start(&["--worker-threads", "0"], &[]);
    assert!(err.contains("worker_threads"), "{err}");
}

#[tokio::test]
async fn env_and_file_configure_the_node_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("herald-cfg2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("herald.toml");
    std::fs::write(
        &file,
        "node_id = \"from-file\"\n[session]\nping_interval = \"7s\"\n",
    )
    .expect("write");
    let gw = herald().start_env(
        &[
            "--config",
            file.to_str().expect("path"),
            "--node-id",
            "from-flag",
        ],
        &[
            ("HERALD_PING_INTERVAL", "3s"),
            ("HERALD_NODE_ID", "from-env"),
            ("HERALD_WORKER_THREADS", "1"),
        ],
    );
    assert_eq!(gw.node, "from-flag");
    let mut c = gw.client().await;
    let r = c.request(json!({"op":"connect"})).await;
    assert_eq!(r["ping_interval_ms"], 3000, "env beats file");
    assert_eq!(r["node"], "from-flag", "flag beats env");

    let gw = herald().start_env(
        &[],
        &[
            ("HERALD_ALLOW_OPEN", "true"),
            ("HERALD_LISTEN", "0.0.0.0:0"),
        ],
    );
    assert!(gw.public.ip().is_unspecified());
    assert!(gw.log_contains("OPEN MODE").await, "loud warning");
}

#[tokio::test]
async fn api_keys_guard_the_publish_api_but_not_probes() {
    let dir = std::env::temp_dir().join(format!("herald-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("keys");
    std::fs::write(&file, "# rotated monthly\nsecond-key-from-a-file\n").expect("write");
    let gw = herald().start(&[
        "--api-key",
        "first-key-on-the-cmdline",
        "--api-keys-file",
        file.to_str().expect("path"),
    ]);
    let body = json!({"channel":"k","event":"e","data":1}).to_string();
    let (s, b) = http_post(gw.admin, "/api/v1/publish", &body).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{b}"
    );
    let (s, b) = http_post_key(
        gw.admin,
        "/api/v1/broadcast",
        &body,
        "wrong-key-of-good-length",
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{b}"
    );
    for key in ["first-key-on-the-cmdline", "second-key-from-a-file"] {
        let (s, b) = http_post_key(gw.admin, "/api/v1/publish", &body, key).await;
        assert_eq!(s, 200, "{key}: {b}");
    }
    assert_eq!(
        http_get(gw.admin, "/readyz").await.0,
        200,
        "probes stay open"
    );
    assert_eq!(
        http_get(gw.admin, "/metrics").await.0,
        200,
        "metrics stay open"
    );
    let cli = |key: Option<&str>| {
        let mut c = herald().command();
        c.args(["publish", "k", "e", "2", "--url"])
            .arg(format!("http://{}", gw.admin));
        if let Some(k) = key {
            c.env("HERALD_API_KEY", k);
        }
        c.output().expect("herald publish")
    };
    assert!(cli(Some("second-key-from-a-file")).status.success());
    let refused = cli(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let err = herald().fail_to_start(&["--api-key", "short"], &[]);
    assert!(err.contains("16 bytes"), "{err}");
}

#[tokio::test]
async fn command_floods_are_rate_limited_then_closed() {
    let gw = herald().start(&["--command-rate", "5", "--command-burst", "5"]);
    let mut c = gw.connected().await;
    for i in 0..20 {
        c.send(json!({"op":"ping","id":1000 + i})).await;
    }
    let mut limited = 0;
    for _ in 0..20 {
        let r = c.recv().await;
        if r["code"] == "rate_limited" {
            assert!(
                r["id"].as_u64().is_some_and(|id| id >= 1000),
                "keeps the id: {r}"
            );
            limited += 1;
        } else {
            assert_eq!(r["op"], "pong", "{r}");
        }
    }
    assert!(
        limited >= 10,
        "most of a burst of 20 is refused, got {limited}"
    );
    // The bucket refills: the connection is usable again (meanwhile each
    // ping is answered with rate_limited).
    eventually("a ping is answered with pong", async || {
        c.request(json!({"op":"ping"})).await["op"] == "pong"
    })
    .await;
    // Other clients were never affected.
    let mut other = gw.connected().await;
    assert_eq!(other.request(json!({"op":"ping"})).await["op"], "pong");

    // A connection that keeps flooding is closed.
    let mut flood = gw.connected().await;
    for _ in 0..1100 {
        flood.send_text(r#"{"op":"ping"}"#).await;
    }
    let (code, notice) = flood.closed().await;
    assert_eq!(code, 4502, "{notice:?}");
    assert!(gw.metric("herald_client_errors_total").await >= 1000.0);
}

fn upgrade_request(addr: std::net::SocketAddr, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{origin}\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn admission_limits_refuse_before_a_session_starts() {
    let gw = herald().start(&[
        "--max-connections",
        "2",
        "--allowed-origin",
        "https://app.example.com",
    ]);
    let (s, _) = http(
        gw.public,
        upgrade_request(gw.public, Some("https://evil.example")),
    )
    .await;
    assert_eq!(s, 403, "a foreign browser origin is refused");
    // Non-browser clients send no Origin and pass.
    let mut a = gw.connected().await;
    let _b = gw.connected().await;
    eventually("two sessions", || async {
        gw.metric("herald_connections").await == 2.0
    })
    .await;
    let (s, body) = http(gw.public, upgrade_request(gw.public, None)).await;
    assert_eq!(s, 503, "full node: {body}");
    assert_eq!(gw.metric("herald_connections_refused_total").await, 2.0);
    // Existing sessions are untouched.
    assert_eq!(a.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn the_js_client_bundle_is_served_at_herald_js() {
    let gw = herald().start(&[]);
    let (s, body) = http_get(gw.public, "/herald.js").await;
    assert_eq!(s, 200);
    let built = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/herald.js"))
        .expect("gateway/assets/herald.js (npm run build in clients/js)");
    assert!(body == built, "/herald.js is the committed bundle");
    assert!(body.contains("herald-client"), "banner names the package");
}
