//! Reconnect tokens and session resume, up to a node killed with SIGKILL
//! under load while its clients resume elsewhere.

use crate::common::{Client, Event, Gateway, Redis, eventually, herald, http_get, http_post};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A client that remembers what it needs to resume: its latest token and,
/// per channel, the epoch and offset of the last message it got.
struct Tracked {
    client: Client,
    token: String,
    seen: HashMap<String, (Value, u64)>,
    /// Every offset received per channel, to check exactly-once in order.
    log: HashMap<String, Vec<u64>>,
}

impl Tracked {
    async fn open(gw: &Gateway, channels: &[&str]) -> Self {
        let mut client = gw.client().await;
        let r = client.request(json!({"op":"connect"})).await;
        let mut t = Self {
            token: r["reconnect_token"].as_str().expect("token").to_owned(),
            client,
            seen: HashMap::new(),
            log: HashMap::new(),
        };
        for ch in channels {
            let r = t.client.subscribe(ch).await;
            t.token = r["reconnect_token"].as_str().expect("token").to_owned();
            t.seen.insert(
                (*ch).to_owned(),
                (r["epoch"].clone(), r["offset"].as_u64().expect("offset")),
            );
            t.log.insert((*ch).to_owned(), Vec::new());
        }
        t
    }

    fn record(&mut self, m: &Value) {
        let ch = m["channel"].as_str().expect("channel").to_owned();
        let off = m["offset"].as_u64().expect("offset");
        self.seen.insert(ch.clone(), (m["epoch"].clone(), off));
        self.log.entry(ch).or_default().push(off);
    }

    /// Reads messages until the connection ends; returns the close code.
    async fn read_until_closed(&mut self) -> u16 {
        loop {
            match self.client.next_event().await {
                Event::Frame(v) if v["op"] == "message" => self.record(&v),
                Event::Frame(_) => {}
                Event::Close(code, _) => return code,
            }
        }
    }

    async fn read_until(&mut self, channel: &str, offset: u64) {
        while self.seen.get(channel).map(|s| s.1) < Some(offset) {
            let m = self.client.message().await;
            self.record(&m);
        }
    }

    fn positions(&self) -> Value {
        let mut p = Map::new();
        for (ch, (epoch, offset)) in &self.seen {
            p.insert(ch.clone(), json!({"epoch": epoch, "offset": offset}));
        }
        Value::Object(p)
    }

    /// Connects to `gw` and resumes; returns the `connected` reply.
    async fn resume(&mut self, gw: &Gateway) -> Value {
        self.resume_at(gw.public).await
    }

    async fn resume_at(&mut self, addr: std::net::SocketAddr) -> Value {
        self.client = Client::open(addr).await;
        let r = self
            .client
            .request(json!({"op":"connect","resume":self.token,"positions":self.positions()}))
            .await;
        if let Some(t) = r["reconnect_token"].as_str() {
            self.token = t.to_owned();
        }
        r
    }

    fn assert_exactly_once(&self, channel: &str, upto: u64) {
        let log = &self.log[channel];
        let first = log.first().copied().unwrap_or(1);
        let want: Vec<u64> = (first..=upto).collect();
        assert_eq!(log, &want, "{channel}: every offset once, in order");
    }
}

#[tokio::test]
async fn a_client_resumes_its_session_and_misses_nothing() {
    let gw = herald().start(&[]);
    let mut t = Tracked::open(&gw, &["a", "b"]).await;
    for ch in ["a", "b"] {
        gw.publish(ch, "e", json!(1)).await;
        t.read_until(ch, 1).await;
    }
    let session = {
        let r = t.client.request(json!({"op":"ping"})).await;
        assert_eq!(r["op"], "pong");
        t.token.split('.').nth(1).map(str::to_owned)
    };
    drop(t.client);
    for ch in ["a", "b"] {
        for i in 0..5 {
            gw.publish(ch, "e", json!(i)).await;
        }
    }
    // The same client comes back with its token and positions.
    let mut t2 = Tracked {
        client: gw.client().await,
        ..t
    };
    let r = t2.resume(&gw).await;
    assert_eq!(r["resumed"], true, "{r}");
    assert_eq!(r["channels"]["a"]["recovered"], true, "{r}");
    assert_eq!(r["channels"]["b"]["offset"], 6);
    assert!(session.is_some());
    for ch in ["a", "b"] {
        t2.read_until(ch, 6).await;
    }
    gw.publish("a", "e", json!("live")).await;
    t2.read_until("a", 7).await;
    t2.assert_exactly_once("a", 7);
    t2.assert_exactly_once("b", 6);
    assert_eq!(gw.metric("herald_resumes_total").await, 1.0);
}

#[tokio::test]
async fn bad_tokens_give_a_fresh_session_and_say_nothing_more() {
    let gw = herald().start(&[
        "--reconnect-ttl",
        "1s",
        "--reconnect-secret",
        "the-first-secret-of-this-node",
    ]);
    let other = herald().start(&["--reconnect-secret", "a-completely-different-secret"]);
    let t = Tracked::open(&gw, &["x"]).await;
    let foreign = Tracked::open(&other, &["x"]).await;
    let tampered = {
        let mut parts: Vec<&str> = t.token.split('.').collect();
        parts[2] = "AAAA";
        parts.join(".")
    };
    let cases = [
        (tampered, "bad_signature"),
        (foreign.token.clone(), "unknown_key"),
        ("nonsense".to_owned(), "malformed"),
    ];
    for (token, reason) in &cases {
        let mut c = gw.client().await;
        let r = c.request(json!({"op":"connect","resume":token})).await;
        assert_eq!(r["resumed"], false, "{reason}: {r}");
        assert!(r.get("channels").is_none(), "{reason}: no channels");
        assert!(!r.to_string().contains(reason), "the reason is not leaked");
        let labelled = format!("herald_resumes_total{{outcome=\"{reason}\"}}");
        let (_, text) = http_get(gw.admin, "/metrics").await;
        assert!(text.contains(&labelled), "{reason} counted");
    }
    // Letting the token's TTL pass (whole seconds) is the behaviour under
    // test; retrying a still-valid token instead would resume its session.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut c = gw.client().await;
    let r = c.request(json!({"op":"connect","resume":t.token})).await;
    assert_eq!(r["resumed"], false, "expired: {r}");
    // A rotated node still accepts tokens signed with its previous secret.
    let rotated = herald().start(&[
        "--reconnect-secret",
        "a-brand-new-secret-value",
        "--reconnect-secret",
        "a-completely-different-secret",
    ]);
    let mut c = rotated.client().await;
    let r = c
        .request(json!({"op":"connect","resume":foreign.token}))
        .await;
    assert_eq!(r["resumed"], true, "old key still verifies: {r}");
}

#[tokio::test]
async fn graceful_drain_then_resume_loses_nothing() {
    let redis = Redis::start();
    // History sized for the drain window: ~200 publications a second for up to 1 s.
    let mut a = herald().start(&[
        "--redis-url",
        &redis.url(),
        "--drain-timeout",
        "1s",
        "--history-size",
        "1000",
    ]);
    let b = herald().start(&["--redis-url", &redis.url(), "--history-size", "1000"]);
    for gw in [&a, &b] {
        eventually("ready", || async { gw.ready().await == 200 }).await;
    }
    let mut t = Tracked::open(&a, &["n"]).await;
    let admin = b.admin;
    let publisher = tokio::spawn(async move {
        for i in 0..200 {
            let body = json!({"channel":"n","event":"e","data":i}).to_string();
            assert_eq!(http_post(admin, "/api/v1/publish", &body).await.0, 200);
            // Paced so that the stream spans the drain.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Drained mid-stream.
    t.read_until("n", 20).await;
    a.signal("TERM");
    assert_eq!(t.read_until_closed().await, 4000);
    let r = t.resume(&b).await;
    assert_eq!(
        (
            r["resumed"].as_bool(),
            r["channels"]["n"]["recovered"].as_bool()
        ),
        (Some(true), Some(true)),
        "{r}"
    );
    publisher.await.expect("publisher");
    t.read_until("n", 200).await;
    t.assert_exactly_once("n", 200);
    assert_eq!(a.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_under_load_loses_nothing() {
    let redis = Redis::start();
    let mut nodes: Vec<Gateway> = (0..3)
        .map(|i| {
            // History covers the time a client needs to notice and resume.
            herald().start(&[
                "--redis-url",
                &redis.url(),
                "--node-id",
                &format!("n{i}"),
                "--history-size",
                "1000",
            ])
        })
        .collect();
    for gw in &nodes {
        eventually("ready", || async { gw.ready().await == 200 }).await;
    }
    let channels: Vec<String> = (0..10).map(|i| format!("room-{i}")).collect();
    let per_channel = 150u64;
    let survivors = [nodes[1].public, nodes[2].public];
    let killed_at: Arc<OnceLock<Instant>> = Arc::default();
    // 300 clients spread over the 3 nodes and the 10 channels; each reads
    // until it has every publication of its channel, resuming on a
    // surviving node with its token if its connection breaks.
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let ch = channels[i % channels.len()].clone();
        let mut t = Tracked::open(&nodes[i % nodes.len()], &[&ch]).await;
        let killed_at = Arc::clone(&killed_at);
        tasks.push(tokio::spawn(async move {
            let mut resumed_after = None;
            loop {
                let done = loop {
                    if t.seen[&ch].1 >= per_channel {
                        break true;
                    }
                    match t.client.next_event().await {
                        Event::Frame(v) if v["op"] == "message" => t.record(&v),
                        Event::Frame(_) => {}
                        Event::Close(..) => break false,
                    }
                };
                if done {
                    break;
                }
                let r = t.resume_at(survivors[i % 2]).await;
                assert_eq!(r["resumed"], true, "{r}");
                assert_eq!(r["channels"][&ch]["recovered"], true, "{r}");
                resumed_after = killed_at.get().map(Instant::elapsed);
            }
            t.assert_exactly_once(&ch, per_channel);
            resumed_after
        }));
    }
    // 500 msg/s through the API of a surviving node, round robin over the
    // channels (paced, so that the kill falls mid-stream).
    let admin = nodes[1].admin;
    let (progress, mut published) = tokio::sync::watch::channel(0usize);
    let publisher = tokio::spawn(async move {
        let start = Instant::now();
        for n in 0..(per_channel as usize * channels.len()) {
            let body = json!({"channel": channels[n % channels.len()], "event":"e", "data": n})
                .to_string();
            let (s, b) = http_post(admin, "/api/v1/publish", &body).await;
            assert_eq!(s, 200, "{b}");
            progress.send_replace(n + 1);
            tokio::time::sleep_until((start + Duration::from_micros(2000 * n as u64)).into()).await;
        }
    });
    // Killed a third of the way through.
    published.wait_for(|n| *n >= 500).await.expect("publisher");
    let _ = killed_at.set(Instant::now());
    drop(nodes.remove(0)); // SIGKILL
    publisher.await.expect("publisher");
    let mut resumed = Vec::new();
    for task in tasks {
        if let Some(d) = task
            .await
            .expect("client: every publication once, in order")
        {
            resumed.push(d);
        }
    }
    resumed.sort();
    eprintln!(
        "{} clients resumed after the kill; median {:?}, last {:?} after it",
        resumed.len(),
        resumed.get(resumed.len() / 2),
        resumed.last()
    );
    assert_eq!(
        resumed.len(),
        100,
        "the killed node's third of the clients resumed"
    );
}

#[tokio::test]
async fn quiet_connections_get_fresh_tokens_before_theirs_expire() {
    let gw = herald().start(&["--ping-interval", "300ms", "--reconnect-ttl", "4s"]);
    let mut c = gw.connected().await;
    let first = c.subscribe("q").await["reconnect_token"].clone();
    let start = Instant::now();
    let mut latest = first.clone();
    let mut pushed = 0;
    // Nothing happens on the channel; the server still keeps the token
    // fresh. Outliving the first token's TTL is the behaviour under test.
    while start.elapsed() < Duration::from_millis(4500) {
        let v = c.recv().await;
        if v["op"] == "token" {
            latest = v["reconnect_token"].clone();
            pushed += 1;
        }
    }
    assert!(pushed >= 1, "a fresh token was pushed");
    let mut back = gw.client().await;
    let r = back.request(json!({"op":"connect","resume":first})).await;
    assert_eq!(r["resumed"], false, "the first token has expired: {r}");
    let mut back = gw.client().await;
    let r = back.request(json!({"op":"connect","resume":latest})).await;
    assert_eq!(r["resumed"], true, "the pushed one still works: {r}");
    assert!(r["channels"].get("q").is_some(), "{r}");
}
