//! Nodes on Redis Sentinel (`redis+sentinel://`): real sentinels over a
//! master and a replica; the master is killed under a steady publish load.

use crate::common::{Sentinels, SteadyPublisher, eventually, herald, nothing_missed_silently};
use serde_json::json;

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

    let publisher = SteadyPublisher::start(&b, "feed");
    publisher.flowing("publications flowing").await;

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
    publisher.flowing("publications flowing again").await;
    publisher.stop().await;
    let (s, body) = b.publish("feed", "last", json!(null)).await;
    assert_eq!(s, 200, "{body}");
    for gw in [&a, &b] {
        assert!(gw.metric("herald_redis_master_changes_total").await >= 1.0);
    }

    nothing_missed_silently(&a, sub, "feed", &epoch, start).await;
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
