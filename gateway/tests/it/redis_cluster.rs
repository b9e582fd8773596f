//! Nodes on a real Redis Cluster (`redis+cluster://`): 3 masters and 3
//! replicas; channels on every master, a master killed or failed over and a
//! busy channel's slot resharded under a steady publish load.

use crate::common::{
    Event, Gateway, RedisCluster, SteadyPublisher, all_ready, herald, nothing_missed_silently,
    read_channels_until_last, subscribe_since,
};
use serde_json::json;
use std::collections::HashMap;

fn nodes(cluster: &RedisCluster, n: usize) -> Vec<Gateway> {
    let url = cluster.url();
    (0..n)
        .map(|i| herald().start(&["--redis-url", &url, "--node-id", &format!("node-{i}")]))
        .collect()
}

/// One channel (`<prefix>-N`) per master, in `cluster.masters()` order.
fn one_channel_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    cluster
        .masters()
        .into_iter()
        .map(|m| {
            (0..)
                .map(|n| format!("{prefix}-{n}"))
                .find(|ch| {
                    cluster.master_of_slot(cluster.slot_of(&format!("herald:{{{ch}}}"))) == m
                })
                .expect("a channel")
        })
        .collect()
}

#[tokio::test]
async fn publications_on_every_slot_range_reach_every_node_once_in_order() {
    let cluster = RedisCluster::start();
    let gws = nodes(&cluster, 3);
    all_ready(&gws).await;
    let channels = one_channel_per_master(&cluster, "room");
    let mut subs = Vec::new();
    let mut epochs = HashMap::new();
    for gw in &gws[..2] {
        let mut c = gw.connected().await;
        for ch in &channels {
            let r = c.subscribe(ch).await;
            assert_eq!(r["offset"], 0, "{r}");
            epochs.insert(ch.clone(), r["epoch"].clone());
        }
        subs.push(c);
    }
    let mut emitter = gws[2].connected().await;
    let mut last = HashMap::new();
    for ch in &channels {
        for i in 0..20 {
            let (s, b) = gws[2].publish(ch, "api", json!({"i": i})).await;
            assert_eq!(s, 200, "{b}");
        }
        for i in 0..5 {
            let r = emitter
                .request(json!({"op":"emit","channel":ch,"event":"ws","data":{"i":i}}))
                .await;
            assert_eq!(r["op"], "emitted", "{r}");
        }
        let (s, b) = gws[2].publish(ch, "last", json!(null)).await;
        assert_eq!((s, &b["offset"]), (200, &json!(26)), "{b}");
        last.insert(ch.clone(), 26);
    }
    for c in &mut subs {
        read_channels_until_last(c, &last).await;
    }

    // A client back on another node gets exactly what it missed, on every master.
    for ch in &channels {
        let mut back = gws[1].connected().await;
        let r = subscribe_since(&mut back, ch, &epochs[ch], 10).await;
        assert_eq!(
            (r["recovered"].as_bool(), r["offset"].as_u64()),
            (Some(true), Some(26)),
            "{r}"
        );
        for offset in 11..=26 {
            let m = back.message().await;
            assert_eq!(
                (&m["channel"], m["offset"].as_u64()),
                (&json!(ch), Some(offset)),
                "{m}"
            );
        }
        let (s, b) = gws[0].publish(ch, "after", json!(null)).await;
        assert_eq!(s, 200, "{b}");
        let m = back.message().await;
        assert_eq!(
            (m["offset"].as_u64(), &m["event"]),
            (Some(27), &json!("after")),
            "{m}"
        );
    }
}

/// What happens to the master of the busy channel's slot.
#[derive(Clone, Copy, PartialEq)]
enum Disruption {
    /// SIGKILL: the replica takes over after the cluster's failure detection.
    Kill,
    /// `CLUSTER FAILOVER` on the replica: the master steps down.
    Failover,
    /// `redis-cli --cluster reshard` moves the slot to another master.
    Reshard,
}

/// A subscriber on node a, a steady publisher on node b, `what` happens to
/// the channel's master; the subscriber misses nothing silently, and new
/// publications still arrive afterwards.
async fn steady_delivery_through(what: Disruption) -> (RedisCluster, Vec<Gateway>) {
    let mut cluster = RedisCluster::start();
    let gws = nodes(&cluster, 2);
    all_ready(&gws).await;
    let (a, b) = (&gws[0], &gws[1]);
    let master = cluster.masters()[0];
    let channel = cluster.channel_in_first_slot_of(master, "feed");
    let slot = cluster.slot_of(&format!("herald:{{{channel}}}"));
    let mut sub = a.connected().await;
    let joined = sub.subscribe(&channel).await;
    let (epoch, start) = (
        joined["epoch"].clone(),
        joined["offset"].as_u64().expect("offset"),
    );

    let publisher = SteadyPublisher::start(b, &channel);
    publisher.flowing("publications flowing").await;

    let new_home = match what {
        Disruption::Kill => {
            let replica = cluster.replica_of(master);
            cluster.kill(master);
            cluster.wait_promoted(replica).await;
            replica
        }
        Disruption::Failover => {
            let replica = cluster.replica_of(master);
            cluster.failover(replica).await;
            replica
        }
        Disruption::Reshard => {
            let to = cluster.masters()[1];
            cluster.reshard_slot(slot, to).await;
            to
        }
    };
    assert_eq!(cluster.master_of_slot(slot), new_home);
    all_ready(&gws).await;
    publisher.flowing("publications flowing again").await;
    publisher.stop().await;
    let (s, body) = b.publish(&channel, "last", json!(null)).await;
    assert_eq!(s, 200, "{body}");

    let mut live = nothing_missed_silently(a, sub, &channel, &epoch, start).await;
    // The node follows the slot: later publications arrive too.
    let (s, body) = b.publish(&channel, "after", json!(null)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(live.message().await["event"], "after");
    drop(live);
    (cluster, gws)
}

#[tokio::test]
async fn a_killed_master_under_steady_publishing_loses_nothing_silently() {
    let (_cluster, gws) = steady_delivery_through(Disruption::Kill).await;
    // The subscriber's node lost its connection to the dead master.
    assert!(
        gws[0].metric("herald_redis_pubsub_reconnects_total").await >= 1.0,
        "{}",
        gws[0].logs()
    );
}

#[tokio::test]
async fn a_planned_cluster_failover_keeps_delivery_going() {
    steady_delivery_through(Disruption::Failover).await;
}

#[tokio::test]
async fn resharding_a_busy_channels_slot_loses_nothing_silently() {
    steady_delivery_through(Disruption::Reshard).await;
}

/// Pub/sub connections per master from `CLIENT LIST`: clients holding at
/// least one shard channel subscription (`ssub=` > 0).
fn shard_subscribers(cluster: &RedisCluster, master: u16) -> usize {
    cluster
        .call(master, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("ssub="))
                .is_some_and(|n| n != "0")
        })
        .count()
}

#[tokio::test]
async fn one_pubsub_connection_per_shard() {
    let cluster = RedisCluster::start();
    let gws = nodes(&cluster, 1);
    all_ready(&gws).await;
    let mut c = gws[0].connected().await;
    for i in 0..200 {
        c.subscribe(&format!("many-{i}")).await;
    }
    let masters = cluster.masters();
    for &m in &masters {
        assert_eq!(
            shard_subscribers(&cluster, m),
            1,
            "master {m}: {}",
            cluster.call(m, &["CLIENT", "LIST"])
        );
    }
    // Every master holds some of the 200 shard channels.
    for &m in &masters {
        let channels = cluster.call(m, &["PUBSUB", "SHARDCHANNELS", "herald:*"]);
        assert!(channels.lines().count() >= 20, "master {m}: {channels}");
    }
    // Still delivering after all that.
    let (s, b) = gws[0].publish("many-7", "e", json!({"n": 1})).await;
    assert_eq!(s, 200, "{b}");
    match c.next_event().await {
        Event::Frame(m) => assert_eq!(
            (&m["channel"], &m["data"]),
            (&json!("many-7"), &json!({"n": 1}))
        ),
        Event::Close(code, why) => panic!("closed {code} {why}"),
    }
}
