//! Nodes on Redis Sentinel (`redis+sentinel://`): real sentinels over a
//! master and a replica; the master is killed under a steady publish load.

use crate::common::{Client, Event, Gateway, Sentinels, eventually, herald};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Publishes `{"i": n}` on `feed` through `gw` every 20 ms until `stop`,
/// counting the accepted ones; failures (Redis down) are simply retried.
fn steady_publisher(
    gw: &Gateway,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let admin = gw.admin;
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let body = json!({"channel":"feed","event":"tick","data":{"i":i}}).to_string();
            let (s, _) = crate::common::http_post(admin, "/api/v1/publish", &body).await;
            if s == 200 {
                accepted.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Reads `feed` until the `last` publication: every message exactly once, in
/// offset order. Returns `Err(position)` when the node closed with 4004
/// first, with the last position seen.
async fn read_until_last(c: &mut Client, epoch: &Value, mut offset: u64) -> Result<(), u64> {
    loop {
        match c.next_event().await {
            Event::Frame(m) if m["op"] == "message" => {
                assert_eq!(&m["epoch"], epoch, "{m}");
                assert_eq!(m["offset"], offset + 1, "exactly once, in order: {m}");
                offset += 1;
                if m["event"] == "last" {
                    return Ok(());
                }
            }
            Event::Frame(_) => {}
            Event::Close(4004, _) => return Err(offset),
            Event::Close(code, why) => panic!("closed with {code} {why}"),
        }
    }
}

#[tokio::test]
async fn nodes_follow_a_sentinel_failover_and_clients_miss_nothing_silently() {
    let mut redis = Sentinels::start();
    eventually("sentinels ready for a failover", || async {
        redis.ready_for_failover()
    })
    .await;
    let url = redis.url();
    let (a, b) = (
        herald().start(&["--redis-url", &url, "--node-id", "a"]),
        herald().start(&["--redis-url", &url, "--node-id", "b"]),
    );
    for gw in [&a, &b] {
        eventually("node ready", || async { gw.ready().await == 200 }).await;
    }
    let mut sub = a.connected().await;
    let joined = sub.subscribe("feed").await;
    let (epoch, start) = (
        joined["epoch"].clone(),
        joined["offset"].as_u64().expect("offset"),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let publisher = steady_publisher(&b, Arc::clone(&stop), Arc::clone(&accepted));
    eventually("publications flowing", || async {
        accepted.load(Ordering::Relaxed) >= 20
    })
    .await;

    let replica = redis.replica.port;
    redis.master.kill();
    eventually("sentinels promote the replica", || async {
        redis.master_port() == Some(replica)
    })
    .await;
    for gw in [&a, &b] {
        eventually("node ready on the new master", || async {
            gw.ready().await == 200
        })
        .await;
    }
    let before = accepted.load(Ordering::Relaxed);
    eventually("publications flowing again", || async {
        accepted.load(Ordering::Relaxed) >= before + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let (s, body) = b.publish("feed", "last", json!(null)).await;
    assert_eq!(s, 200, "{body}");
    for gw in [&a, &b] {
        assert!(gw.metric("herald_redis_master_changes_total").await >= 1.0);
    }

    let Err(seen) = read_until_last(&mut sub, &epoch, start).await else {
        return;
    };
    // Told to recover: recovery is exact or says it is not.
    let mut back = a.connected().await;
    let r = back
        .request(json!({"op":"subscribe","channel":"feed","since":{"epoch":epoch,"offset":seen}}))
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    match r["recovered"].as_bool() {
        Some(true) => {
            assert_eq!(r["epoch"], epoch, "{r}");
            if read_until_last(&mut back, &epoch, seen).await.is_err() {
                panic!("closed again after recovering");
            }
        }
        Some(false) => {}
        None => panic!("recovered must be explicit: {r}"),
    }
}

/// A planned failover (`SENTINEL FAILOVER`) leaves the old master running
/// as a replica: nodes notice the new master and move to it.
#[tokio::test]
async fn nodes_follow_a_planned_failover() {
    let redis = Sentinels::start();
    eventually("sentinels ready for a failover", || async {
        redis.ready_for_failover()
    })
    .await;
    let url = redis.url();
    let (a, b) = (
        herald().start(&["--redis-url", &url]),
        herald().start(&["--redis-url", &url]),
    );
    for gw in [&a, &b] {
        eventually("node ready", || async { gw.ready().await == 200 }).await;
    }
    redis.failover();
    let replica = redis.replica.port;
    eventually("sentinels promote the replica", || async {
        redis.master_port() == Some(replica)
    })
    .await;
    for gw in [&a, &b] {
        eventually("node moved to the new master", || async {
            gw.metric("herald_redis_master_changes_total").await >= 1.0 && gw.ready().await == 200
        })
        .await;
    }
    let mut sub = a.connected().await;
    sub.subscribe("after").await;
    eventually("publishing on the new master", || async {
        b.publish("after", "e", json!({"n": 1})).await.0 == 200
    })
    .await;
    assert_eq!(sub.message().await["data"], json!({"n": 1}));
}
