//! History and recovery (`subscribe` with `since`) through real processes,
//! on the embedded broker and on Redis.

use crate::common::{Client, Gateway, Redis, eventually, herald, http_post, subscribe_since};
use serde_json::json;
use std::time::Duration;

/// Reads `n` messages and checks their offsets run `from+1 ..= from+n`.
async fn expect_run(c: &mut Client, from: u64, n: u64) {
    for i in 1..=n {
        let m = c.message().await;
        assert_eq!(m["offset"], from + i, "exactly once, in order: {m}");
    }
}

async fn publish_n(gw: &Gateway, channel: &str, n: u64) {
    for i in 0..n {
        let (s, b) = gw.publish(channel, "e", json!({ "i": i })).await;
        assert_eq!(s, 200, "{b}");
    }
}

#[tokio::test]
async fn a_returning_client_gets_exactly_what_it_missed() {
    let gw = herald().start(&[]);
    let mut c = gw.connected().await;
    let epoch = c.subscribe("news").await["epoch"].clone();
    publish_n(&gw, "news", 5).await;
    expect_run(&mut c, 0, 5).await;
    drop(c);

    publish_n(&gw, "news", 10).await;
    let mut back = gw.connected().await;
    let r = subscribe_since(&mut back, "news", &epoch, 5).await;
    assert_eq!(
        (r["recovered"].as_bool(), r["offset"].as_u64()),
        (Some(true), Some(15))
    );
    expect_run(&mut back, 5, 10).await;
    publish_n(&gw, "news", 1).await;
    expect_run(&mut back, 15, 1).await;

    // Nothing missed is a recovery too.
    let mut again = gw.connected().await;
    let r = subscribe_since(&mut again, "news", &epoch, 16).await;
    assert_eq!(r["recovered"], true);
    // Nothing replayed twice or for nothing: the next message either gets
    // is the next publication.
    publish_n(&gw, "news", 1).await;
    expect_run(&mut back, 16, 1).await;
    expect_run(&mut again, 16, 1).await;
    assert_eq!(gw.metric("herald_messages_replayed_total").await, 10.0);
}

#[tokio::test]
async fn recovery_is_all_or_nothing() {
    let gw = herald().start(&["--history-size", "5", "--recovery-max", "8"]);
    let mut c = gw.connected().await;
    let epoch = c.subscribe("feed").await["epoch"].clone();
    publish_n(&gw, "feed", 10).await;
    expect_run(&mut c, 0, 10).await;
    let mut top = 10u64;

    // Within what history holds: recovered.
    let mut ok = gw.connected().await;
    let r = subscribe_since(&mut ok, "feed", &epoch, top - 3).await;
    assert_eq!(r["recovered"], true, "{r}");
    expect_run(&mut ok, top - 3, 3).await;

    let cases = [
        (epoch.clone(), top - 6, "older than what history holds"),
        (epoch.clone(), 1, "more than recovery_max"),
        (json!("not-the-epoch"), top, "another epoch"),
        (epoch.clone(), top + 5, "ahead of the channel"),
    ];
    for (since_epoch, since, why) in cases {
        let mut late = gw.connected().await;
        let r = subscribe_since(&mut late, "feed", &since_epoch, since).await;
        assert_eq!(r["recovered"], false, "{why}: {r}");
        assert_eq!(r["offset"], top, "{why}");
        // No part of the broken range is replayed; live delivery goes on.
        publish_n(&gw, "feed", 1).await;
        top += 1;
        assert_eq!(late.message().await["offset"], top, "{why}");
        expect_run(&mut c, top - 1, 1).await;
    }
    assert!(gw.metric("herald_recoveries_total").await >= 5.0);
}

#[tokio::test]
async fn expired_history_is_not_replayed() {
    let gw = herald().start(&["--history-ttl", "1s"]);
    let mut c = gw.connected().await;
    let epoch = c.subscribe("t").await["epoch"].clone();
    publish_n(&gw, "t", 3).await;
    expect_run(&mut c, 0, 3).await;
    // Letting the TTL pass is the behaviour under test: nothing to wait on.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut late = gw.connected().await;
    let r = subscribe_since(&mut late, "t", &epoch, 1).await;
    assert_eq!(r["recovered"], false, "{r}");
}

/// Clients recover from random earlier positions while a publisher keeps
/// going: each must see every offset after its position exactly once.
async fn recover_under_publishing(nodes: &[Gateway]) {
    let mut first = nodes[0].connected().await;
    let epoch = first.subscribe("busy").await["epoch"].clone();
    publish_n(&nodes[0], "busy", 20).await;
    expect_run(&mut first, 0, 20).await;
    let total = 300u64;
    let admin = nodes[0].admin;
    let (progress, published) = tokio::sync::watch::channel(0u64);
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            let body = json!({"channel":"busy","event":"e","data":i}).to_string();
            assert_eq!(http_post(admin, "/api/v1/publish", &body).await.0, 200);
            progress.send_replace(i + 1);
        }
    });
    // The k-th client recovers once 25 k publications are out.
    let mut joiners = Vec::new();
    for k in 0..10u64 {
        let mut c = nodes[(k as usize) % nodes.len()].connected().await;
        let epoch = epoch.clone();
        let mut published = published.clone();
        joiners.push(tokio::spawn(async move {
            published
                .wait_for(|n| *n >= 25 * k)
                .await
                .expect("publisher");
            let since = 20 - k;
            let r = subscribe_since(&mut c, "busy", &epoch, since).await;
            assert_eq!(r["recovered"], true, "{r}");
            expect_run(&mut c, since, 20 + total - since).await;
        }));
    }
    publisher.await.expect("publisher");
    for j in joiners {
        j.await.expect("joiner");
    }
}

#[tokio::test]
async fn recovery_races_no_publication_on_the_embedded_broker() {
    let gw = herald().start(&["--history-size", "1000"]);
    recover_under_publishing(std::slice::from_ref(&gw)).await;
}

#[tokio::test]
async fn recovery_works_across_redis_nodes_under_publishing() {
    let redis = Redis::start();
    let nodes: Vec<Gateway> = (0..2)
        .map(|_| herald().start(&["--redis-url", &redis.url(), "--history-size", "1000"]))
        .collect();
    for gw in &nodes {
        eventually("ready", || async { gw.ready().await == 200 }).await;
    }
    recover_under_publishing(&nodes).await;
}

#[tokio::test]
async fn a_flushed_redis_means_a_new_epoch_and_no_recovery() {
    let redis = Redis::start();
    let gw = herald().start(&["--redis-url", &redis.url()]);
    eventually("ready", || async { gw.ready().await == 200 }).await;
    let mut c = gw.connected().await;
    let epoch = c.subscribe("x").await["epoch"].clone();
    publish_n(&gw, "x", 3).await;
    expect_run(&mut c, 0, 3).await;
    drop(c);
    eventually("unsubscribed", || async {
        gw.metric("herald_channels").await == 0.0
    })
    .await;
    redis.flushall();
    publish_n(&gw, "x", 2).await;
    let mut back = gw.connected().await;
    let r = subscribe_since(&mut back, "x", &epoch, 3).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_ne!(r["epoch"], epoch, "state lost: new epoch");
    assert_eq!(r["offset"], 2);
    drop(back);
    eventually("unsubscribed", || async {
        gw.metric("herald_channels").await == 0.0
    })
    .await;

    // Only the position hash lost (as an eviction would do), history left:
    // a new epoch starts and publishing still works.
    assert_eq!(redis.cmd(&["DEL", "herald:{x}:m"]), ":1");
    let mut fresh = gw.connected().await;
    let r = fresh.subscribe("x").await;
    assert_eq!(r["offset"], 0, "{r}");
    let (s, b) = gw.publish("x", "e", json!(1)).await;
    assert_eq!((s, b["offset"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(fresh.message().await["offset"], 1);
}

/// Redis loses acknowledged writes (a failover to a lagging replica, a
/// restore): the channel keeps its epoch but its offset goes back. The node
/// notices when its pub/sub connection comes back, starts a new epoch, and
/// its clients are told to recover, which they cannot do silently wrong.
#[tokio::test]
async fn lost_redis_writes_start_a_new_epoch() {
    let redis = Redis::start();
    let gw = herald().start(&["--redis-url", &redis.url()]);
    eventually("ready", || async { gw.ready().await == 200 }).await;
    let mut c = gw.connected().await;
    let epoch = c.subscribe("x").await["epoch"].clone();
    publish_n(&gw, "x", 5).await;
    expect_run(&mut c, 0, 5).await;
    // What a lagging replica would hold: offsets 4 and 5 never happened.
    assert_eq!(redis.cmd(&["HSET", "herald:{x}:m", "o", "3"]), ":0");
    assert_eq!(
        redis.cmd(&["XDEL", "herald:{x}:h", "4-0", "5-0"]),
        ":2",
        "history follows the replica"
    );
    // The failover breaks the node's connections.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let (code, _) = c.closed().await;
    assert_eq!(code, 4004, "subscribers must recover");
    // A client that saw offset 5 cannot mistake the new offsets 4, 5 for its own.
    publish_n(&gw, "x", 2).await;
    let mut back = gw.connected().await;
    let r = subscribe_since(&mut back, "x", &epoch, 5).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_ne!(r["epoch"], epoch, "{r}");
    assert!(gw.metric("herald_channel_state_resets_total").await >= 1.0);
    assert!(gw.log_contains("offset went backwards").await);
}
