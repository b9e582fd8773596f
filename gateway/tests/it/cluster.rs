//! Several real gateway processes on one real `redis-server`.

use crate::common::{Client, Event, Gateway, Redis, all_ready, eventually, herald, http_post};
use serde_json::json;

fn cluster(redis: &Redis, n: usize) -> Vec<Gateway> {
    (0..n)
        .map(|i| {
            herald().start(&[
                "--redis-url",
                &redis.url(),
                "--node-id",
                &format!("node-{i}"),
            ])
        })
        .collect()
}

/// Reads `n` messages and checks offsets run `from+1 ..= from+n` with no extras.
async fn expect_run(c: &mut Client, from: u64, n: u64) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for i in 1..=n {
        let m = c.message().await;
        assert_eq!(m["offset"], from + i, "exactly once, in order: {m}");
        out.push(m);
    }
    out
}

#[tokio::test]
async fn an_emit_on_any_node_reaches_every_node_exactly_once_in_order() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3);
    all_ready(&nodes).await;
    let mut clients = Vec::new();
    for gw in &nodes {
        for _ in 0..2 {
            let mut c = gw.connected().await;
            let r = c.subscribe("room").await;
            assert_eq!(r["offset"], 0);
            clients.push(c);
        }
    }
    let epoch = clients[0].subscribe("room").await["epoch"].clone();
    // Emits from a client on node 0 and API publishes on node 1, interleaved.
    let mut emitter = nodes[0].connected().await;
    let admin1 = nodes[1].admin;
    let api = tokio::spawn(async move {
        for i in 0..50 {
            let body = json!({"channel":"room","event":"api","data":{"i":i}}).to_string();
            let (s, b) = http_post(admin1, "/api/v1/publish", &body).await;
            assert_eq!(s, 200, "{b}");
        }
    });
    for i in 0..50 {
        let r = emitter
            .request(json!({"op":"emit","channel":"room","event":"ws","data":{"i":i}}))
            .await;
        assert_eq!(r["op"], "emitted", "{r}");
    }
    api.await.expect("api publisher");
    // Anything extra would reach a client before this last publication.
    let (s, b) = nodes[2].publish("room", "last", json!(null)).await;
    assert_eq!(s, 200, "{b}");
    for c in &mut clients {
        let msgs = expect_run(c, 0, 100).await;
        assert!(msgs.iter().all(|m| m["epoch"] == epoch));
        for source in ["ws", "api"] {
            let seq: Vec<u64> = msgs
                .iter()
                .filter(|m| m["event"] == source)
                .map(|m| m["data"]["i"].as_u64().expect("i"))
                .collect();
            assert_eq!(
                seq,
                (0..50).collect::<Vec<_>>(),
                "{source} messages in publish order"
            );
        }
        let last = c.message().await;
        assert_eq!(
            (last["event"].as_str(), last["offset"].as_u64()),
            (Some("last"), Some(101))
        );
    }
    // Every node subscribed to Redis once, not once per client.
    for gw in &nodes {
        assert_eq!(gw.metric("herald_channels").await, 1.0);
    }
}

#[tokio::test]
async fn subscribing_while_others_publish_never_skips_or_repeats() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2);
    all_ready(&nodes).await;
    let total = 400u64;
    let admin = nodes[0].admin;
    let (progress, published) = tokio::sync::watch::channel(0u64);
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            let body = json!({"channel":"live","event":"e","data":i}).to_string();
            assert_eq!(http_post(admin, "/api/v1/publish", &body).await.0, 200);
            progress.send_replace(i + 1);
        }
    });
    // Clients join on the other node at staggered points of the stream (the
    // k-th after 50 k publications); each must see exactly the offsets after
    // the one its `subscribed` named.
    let mut joiners = Vec::new();
    for k in 0..8u64 {
        let mut c = nodes[1].connected().await;
        let mut published = published.clone();
        joiners.push(tokio::spawn(async move {
            published
                .wait_for(|n| *n >= 50 * k)
                .await
                .expect("publisher");
            let start = c.subscribe("live").await["offset"]
                .as_u64()
                .expect("offset");
            expect_run(&mut c, start, total - start).await;
            start
        }));
    }
    publisher.await.expect("publisher");
    for j in joiners {
        j.await.expect("joiner");
    }
}

#[tokio::test]
async fn redis_outage_is_reported_and_recovered() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2);
    all_ready(&nodes).await;
    let mut a = nodes[0].connected().await;
    let mut b = nodes[1].connected().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    let (s, _) = nodes[1].publish("news", "e", json!(1)).await;
    assert_eq!(s, 200);
    assert_eq!(a.message().await["offset"], 1);
    assert_eq!(b.message().await["offset"], 1);

    redis.kill();
    for gw in &nodes {
        eventually("readyz turns 503", || async { gw.ready().await == 503 }).await;
    }
    assert_eq!(nodes[0].metric("herald_broker_up").await, 0.0);
    let (s, body) = nodes[0].publish("news", "e", json!(2)).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let mut c = nodes[0].connected().await;
    let r = c.request(json!({"op":"subscribe","channel":"other"})).await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{r}"
    );
    let r = c
        .request(json!({"op":"emit","channel":"news","event":"e"}))
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");

    // Redis comes back empty: the channel's history is gone, so its clients
    // are told to resubscribe/recover (4004) rather than silently continue.
    redis.restart();
    for gw in &nodes {
        eventually("readyz back to 200", || async { gw.ready().await == 200 }).await;
    }
    for cl in [&mut a, &mut b] {
        let (code, notice) = cl.closed().await;
        assert_eq!(code, 4004);
        assert_eq!(notice.expect("notice")["reconnect"], true);
    }
    // Fresh subscriptions on both nodes work end to end again.
    let mut a = nodes[0].connected().await;
    let mut b = nodes[1].connected().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    let (s, body) = nodes[0].publish("news", "e", json!(3)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["offset"], 1, "new epoch starts over");
    assert_eq!(a.message().await["data"], 3);
    assert_eq!(b.message().await["data"], 3);
    assert_eq!(c.subscribe("other").await["offset"], 0);
}

#[tokio::test]
async fn a_node_starts_before_redis_and_becomes_ready() {
    let mut redis = Redis::start();
    redis.kill();
    let gw = herald().start(&["--redis-url", &redis.url()]);
    assert_eq!(gw.ready().await, 503);
    let (s, _) = gw.publish("x", "e", json!(1)).await;
    assert_eq!(s, 503);
    redis.restart();
    eventually("ready once Redis is up", || async {
        gw.ready().await == 200
    })
    .await;
    let mut c = gw.connected().await;
    c.subscribe("x").await;
    gw.publish("x", "e", json!(1)).await;
    assert_eq!(c.message().await["offset"], 1);
}

#[tokio::test]
async fn a_draining_node_keeps_delivering_until_each_client_is_told_to_leave() {
    let redis = Redis::start();
    let url = redis.url();
    // Clients are told to leave at random moments over 16 s (80% of 20 s).
    let nodes = [
        herald().start(&["--redis-url", &url, "--drain-timeout", "20s"]),
        herald().start(&["--redis-url", &url]),
    ];
    all_ready(&nodes).await;
    let [draining, other] = &nodes;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = draining.connected().await;
        c.subscribe("d").await;
        clients.push(c);
    }
    draining.signal("TERM");
    eventually("the node reports draining", || async {
        draining.ready().await == 503
    })
    .await;
    // Published on the other node: it reaches the draining one through Redis.
    let (status, body) = other.publish("d", "e", json!("during the drain")).await;
    assert_eq!(status, 200, "{body}");
    let mut delivered = 0;
    for c in &mut clients {
        match c.next_event().await {
            Event::Frame(m) if m["op"] == "message" => {
                assert_eq!(m["data"], "during the drain");
                delivered += 1;
            }
            // Its turn to leave came before the publication.
            Event::Frame(m) => assert_eq!(m["op"], "disconnect", "{m}"),
            Event::Close(code, _) => assert_eq!(code, 4000),
        }
    }
    // Each client leaves at its own moment; about 1 in 30 is gone this early.
    assert!(delivered >= 15, "only {delivered} of 20 still received");
}
