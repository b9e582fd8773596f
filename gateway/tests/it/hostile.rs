//! Hostile input against a real node: each gets its documented answer and
//! the node keeps serving a bystander client throughout.

use crate::common::{Client, Gateway, eventually, herald, http, http_get, http_post_raw};
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A subscribed client that must keep receiving while others misbehave.
async fn bystander(gw: &Gateway) -> Client {
    let mut c = gw.connected().await;
    c.subscribe("calm").await;
    c
}

async fn still_served(gw: &Gateway, c: &mut Client, n: u64) {
    let (status, body) = gw.publish("calm", "e", json!(n)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.message().await["data"], n);
}

#[tokio::test]
async fn hostile_json_gets_clear_errors() {
    let gw = herald().start(&[]);
    let mut calm = bystander(&gw).await;
    let mut c = gw.connected().await;
    c.subscribe("x").await;

    // 20,000 levels of nesting in a payload: refused by name, never forwarded
    // to subscribers whose JSON parsers could choke on it.
    let deep = format!(
        r#"{{"op":"emit","id":1,"channel":"x","event":"e","data":{}1{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    c.send_text(&deep).await;
    let r = c.recv().await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{r}"
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nested deeper"),
        "{r}"
    );
    let deep_unknown = format!(
        r#"{{"op":"ping","id":2,"junk":{}{}}}"#,
        "{\"a\":".repeat(5000),
        "}".repeat(5000)
    );
    c.send_text(&deep_unknown).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    still_served(&gw, &mut calm, 1).await;

    // Huge numbers: an id beyond u64 is a bad request; a payload number is carried verbatim.
    c.send_text(r#"{"op":"ping","id":123456789012345678901234567890}"#)
        .await;
    let r = c.recv().await;
    assert_eq!(r["code"], "bad_request", "{r}");
    c.send_text(r#"{"op":"ping","id":1e400}"#).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    let big = "123456789012345678901234567890123456789012345678901234567890";
    c.send_text(&format!(
        r#"{{"op":"emit","id":3,"channel":"x","event":"e","data":{big}}}"#
    ))
    .await;
    let mut got_reply = false;
    let mut got_message = false;
    while !(got_reply && got_message) {
        let text = c.recv_text().await;
        let v: Value = serde_json::from_str(&text).expect("json");
        match v["op"].as_str() {
            Some("emitted") => got_reply = true,
            Some("message") => {
                assert!(
                    text.contains(&format!("\"data\":{big}")),
                    "digits kept exactly: {text}"
                );
                got_message = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }

    // Unknown fields are ignored (forward compatibility), unknown ops are not.
    let r = c
        .request(json!({"op":"ping","future_field":{"x":[1,2]}}))
        .await;
    assert_eq!(r["op"], "pong", "{r}");
    let r = c.request(json!({"op":"teleport"})).await;
    assert_eq!(r["code"], "bad_request");
    // Wrong types.
    let r = c.request(json!({"op":"subscribe","channel":42})).await;
    assert_eq!(r["code"], "bad_request", "{r}");
    let r = c.request(json!({"op":["connect"]})).await;
    assert_eq!(r["code"], "bad_request", "{r}");
    still_served(&gw, &mut calm, 2).await;
}

#[tokio::test]
async fn one_mebibyte_frames_close_only_their_sender() {
    let gw = herald().start(&[]);
    let mut calm = bystander(&gw).await;
    let mut c = gw.connected().await;
    let mib = json!({"op":"emit","channel":"x","event":"e","data":"z".repeat(1 << 20)}).to_string();
    c.send_text(&mib).await;
    let (code, notice) = c.closed().await;
    assert_eq!(code, 4503);
    assert_eq!(notice.expect("notice")["reason"], "message too large");
    // The same mebibyte as a binary frame.
    let mut c = gw.connected().await;
    c.send_frame(Frame::binary(Payload::Owned(vec![0u8; 1 << 20])))
        .await;
    assert_eq!(c.closed().await.0, 4503);
    still_served(&gw, &mut calm, 1).await;
}

#[tokio::test]
async fn a_thousand_subscribes_in_one_second() {
    let gw = herald().start(&[]);
    let mut calm = bystander(&gw).await;
    let mut c = gw.connected().await;
    for i in 0..1000 {
        c.send(json!({"op":"subscribe","id":i + 1,"channel":format!("burst-{i}")}))
            .await;
    }
    // Each command is either run (a subscription more) or refused (an error
    // counted); the bystander holds the one other subscription.
    eventually("the node has dealt with all 1000", async || {
        gw.metric("herald_subscriptions").await - 1.0
            + gw.metric("herald_client_errors_total").await
            >= 1000.0
    })
    .await;
    let subscribed = gw.metric("herald_subscriptions").await as u32 - 1;
    let errors = gw.metric("herald_client_errors_total").await as u32;
    assert_eq!(errors, 1000 - subscribed, "every refusal counted");
    let unanswered = gw
        .metric(r#"herald_client_errors_total{code="rate_limited_silent"}"#)
        .await as u32;
    let answered = gw
        .metric(r#"herald_client_errors_total{code="rate_limited"}"#)
        .await as u32;
    // Read every answer the node gave: the successes and the errors it did
    // not drop.
    let mut by_kind = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..subscribed + errors - unanswered {
        let r = c.recv().await;
        let kind = match r["op"].as_str() {
            Some("error") => r["code"].as_str().unwrap_or_default().to_owned(),
            other => other.unwrap_or_default().to_owned(),
        };
        *by_kind.entry(kind).or_default() += 1;
    }
    println!("1000 subscribes in a burst: {by_kind:?}");
    // The burst allowance (200, plus what refills meanwhile) is admitted; the
    // next 100 refusals are answered with rate_limited, later ones only
    // counted; 1000 refusals would have closed the connection.
    assert_eq!(by_kind.get("subscribed"), Some(&subscribed), "{by_kind:?}");
    assert!((200..=256).contains(&subscribed), "{by_kind:?}");
    assert_eq!(by_kind.get("rate_limited"), Some(&answered), "{by_kind:?}");
    assert!((100..=110).contains(&answered), "{by_kind:?}");
    assert_eq!(by_kind.len(), 2, "{by_kind:?}");
    // Usable again once tokens come back; until then refusals go unanswered.
    eventually("usable again", async || {
        c.request_within(json!({"op":"ping"}), Duration::from_millis(100))
            .await
            .is_some_and(|r| r["op"] == "pong")
    })
    .await;
    assert_eq!(
        gw.metric("herald_subscriptions").await,
        f64::from(subscribed + 1)
    );
    still_served(&gw, &mut calm, 1).await;
}

#[tokio::test]
async fn a_half_open_connection_is_reaped_by_the_pong_deadline() {
    let gw = herald().start(&["--ping-interval", "200ms", "--pong-timeout", "300ms"]);
    // The bystander answers pings while it waits for its message.
    let mut calm = bystander(&gw).await;
    let waiting = tokio::spawn(async move { calm.message().await });
    // A peer that vanished without a FIN: it never reads, never answers.
    let mut ghost = gw.connected().await;
    ghost.subscribe("calm").await;
    // Closed for the missed pong (4002), not by anything slower.
    eventually("the silent session is closed with 4002", || async {
        gw.metric(r#"herald_disconnects_total{code="4002"}"#).await >= 1.0
    })
    .await;
    assert_eq!(gw.metric("herald_disconnects_total").await, 1.0);
    // Its socket is released even though the peer never acknowledges the close.
    eventually("only the bystander is left", || async {
        gw.metric("herald_connections").await == 1.0
    })
    .await;
    let (status, _) = gw.publish("calm", "e", json!(1)).await;
    assert_eq!(status, 200);
    assert_eq!(waiting.await.expect("bystander")["data"], 1);
    drop(ghost);
}

#[tokio::test]
async fn plain_http_to_the_websocket_endpoint_is_told_what_to_do() {
    let gw = herald().start(&[]);
    let mut calm = bystander(&gw).await;
    let (status, body) = http_get(gw.public, "/ws").await;
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("Upgrade: websocket"), "{body}");
    let (status, _) = http_post_raw(gw.public, "/ws", "{}").await;
    assert_eq!(status, 405);
    // Not HTTP at all.
    let (status, _) = http(gw.public, "HELLO THERE\r\n\r\n".to_owned()).await;
    assert_eq!(status, 400);
    // API bodies that are not JSON.
    for body in ["", "not json", "[1,2]", "{\"channel\":", "\u{0}\u{1}"] {
        let (status, text) = http_post_raw(gw.admin, "/api/v1/publish", body).await;
        assert_eq!(status, 400, "{body:?}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON error body");
        assert_eq!(v["error"]["code"], "bad_request", "{text}");
    }
    still_served(&gw, &mut calm, 1).await;
}

#[tokio::test]
async fn invalid_utf8_and_bad_opcodes_close_with_protocol_errors() {
    let gw = herald().start(&[]);
    let mut calm = bystander(&gw).await;
    let mut c = gw.connected().await;
    c.send_frame(Frame::new(
        true,
        OpCode::Text,
        None,
        Payload::Borrowed(b"{\"op\":\"\xff\xfe\"}"),
    ))
    .await;
    assert_eq!(c.closed().await.0, 4502);
    // A continuation with no message to continue.
    let mut c = gw.connected().await;
    c.send_frame(Frame::new(
        true,
        OpCode::Continuation,
        None,
        Payload::Borrowed(b"x"),
    ))
    .await;
    assert_eq!(c.closed().await.0, 4502);
    still_served(&gw, &mut calm, 1).await;
}

/// One attacker connection after another until `stop`: each sends 1,500
/// commands (emits, subscribes, pings) without reading, then waits for the
/// node to close it. Returns the close code of each; `cut` counts them as
/// they come.
async fn flood(public: SocketAddr, stop: Arc<AtomicBool>, cut: Arc<AtomicU64>) -> Vec<u16> {
    let mut codes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut c = Client::open(public).await;
        c.send_text(r#"{"op":"connect"}"#).await;
        for i in 0..1500u32 {
            let cmd = match i % 3 {
                0 => r#"{"op":"emit","channel":"spam","event":"e","data":{"x":[1,2,3]}}"#,
                1 => r#"{"op":"subscribe","channel":"spam"}"#,
                _ => r#"{"op":"ping"}"#,
            };
            c.send_text(cmd).await;
        }
        codes.push(c.closed().await.0);
        cut.fetch_add(1, Ordering::Relaxed);
    }
    codes
}

/// Latency under a flood is measured by `herald-load flood` (see
/// docs/benchmarks.md); this checks only what a user would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_is_cut_off_and_other_clients_miss_nothing() {
    let gw = herald().start(&[]);
    let mut subs = Vec::new();
    for _ in 0..20 {
        let mut c = gw.connected().await;
        c.subscribe("feed").await;
        subs.push(c);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicU64::new(0));
    // The attacker gets its own thread and runtime, so it competes with
    // the subscribers for the machine, not for the test's scheduler.
    let (public, st, n) = (gw.public, stop.clone(), cut.clone());
    let attacker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(flood(public, st, n))
    });
    eventually("the node cuts off a first attacker", async || {
        cut.load(Ordering::Relaxed) >= 1
    })
    .await;

    // Each subscriber reads until the end marker: every publication, once, in order.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut next = 0u64;
                loop {
                    let m = c.message().await;
                    if m["data"] == "end" {
                        return next;
                    }
                    assert_eq!(m["data"], next, "in order, none lost or repeated");
                    next += 1;
                }
            })
        })
        .collect();
    // At least 400 publications, and on until two more attackers were cut
    // off meanwhile: the flood lasts the whole stream.
    let cut_before = cut.load(Ordering::Relaxed);
    let mut published = 0u64;
    while published < 400 || cut.load(Ordering::Relaxed) < cut_before + 2 {
        assert!(
            published < 100_000,
            "the node stopped cutting off attackers"
        );
        let (status, body) = gw.publish("feed", "t", json!(published)).await;
        assert_eq!(status, 200, "{body}");
        published += 1;
    }
    let (status, body) = gw.publish("feed", "t", json!("end")).await;
    assert_eq!(status, 200, "{body}");
    for r in readers {
        assert_eq!(r.await.expect("subscriber"), published);
    }
    stop.store(true, Ordering::Relaxed);
    let codes = attacker.join().expect("attacker");
    println!(
        "{published} publications to 20 subscribers while {} attacker connections were cut off",
        codes.len()
    );
    assert!(codes.len() >= 3, "{codes:?}");
    assert!(
        codes.iter().all(|&c| c == 4502),
        "each attacker closed as a command flood: {codes:?}"
    );
    assert!(gw.metric(r#"herald_disconnects_total{code="4502"}"#).await >= codes.len() as f64);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_cut_at_the_byte_bound() {
    const BOUND: usize = 1024 * 1024;
    // The frame bound is set out of reach: only the byte bound can act.
    let gw = herald().start(&[
        "--outbound-queue-bytes",
        &BOUND.to_string(),
        "--outbound-queue",
        "100000",
        // History would hold the last 100 publications (6 MB) whatever the queues do.
        "--history-size",
        "0",
    ]);
    let mut stuck = gw.connected().await;
    stuck.subscribe("big").await;
    let mut healthy = gw.connected().await;
    healthy.subscribe("big").await;
    // 320 publications of ~63 KB: 20 MB, far past what the kernel buffers
    // of a client that stopped reading can absorb.
    let (n, payload) = (320u64, "x".repeat(63_000));
    let reader = tokio::spawn(async move {
        for i in 1..=n {
            let m = healthy.message().await;
            assert_eq!(
                m["offset"], i,
                "the healthy subscriber gets every message in order"
            );
        }
    });
    let rss = || async { gw.metric("process_resident_memory_bytes").await };
    let (rss_before, mut rss_max, mut queued_max) = (rss().await, 0f64, 0f64);
    for i in 0..n {
        let (status, body) = gw.publish("big", "blob", json!(payload)).await;
        assert_eq!(status, 200, "{body}");
        if i % 8 == 0 {
            queued_max = queued_max.max(gw.metric("herald_outbound_queued_bytes").await);
            rss_max = rss_max.max(rss().await);
        }
    }
    reader.await.expect("healthy reader");
    eventually(
        "the stuck subscriber is closed as a slow consumer",
        || async { gw.metric("herald_slow_consumer_disconnects_total").await == 1.0 },
    )
    .await;
    let (_, text) = http_get(gw.admin, "/metrics").await;
    assert!(
        text.lines()
            .any(|l| l == "herald_disconnects_total{code=\"4001\"} 1"),
        "closed with 4001"
    );
    // Both queues together: the stuck one never exceeds the bound, the
    // healthy one holds at most a few frames at a scrape.
    assert!(
        queued_max <= (BOUND + 8 * 64 * 1024) as f64,
        "queued bytes peaked at {queued_max}"
    );
    // Without the byte bound the stuck queue alone would pin ~20 MB.
    let grew = (rss_max - rss_before) / 1024.0 / 1024.0;
    eprintln!("resident memory grew by {grew:.1} MiB");
    assert!(grew < 8.0, "resident memory grew by {grew:.1} MiB");
    // Cut, it no longer holds anything.
    eventually("queues drain", || async {
        gw.metric("herald_outbound_queued_bytes").await == 0.0
    })
    .await;
}
