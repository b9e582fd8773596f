//! Nodes on client-side shards (`--redis-shard URL`, repeated): three
//! independent `redis-server`s, every channel on the one
//! `herald_proto::redis::shard_of` names.

use crate::common::{
    Gateway, Redis, all_ready, eventually, herald, read_channels_until_last, subscribe_since,
};
use herald_proto::redis::{meta_key, shard_of};
use serde_json::json;
use std::collections::HashMap;

/// A node on `shards`, in that order.
fn node_on(shards: &[&Redis]) -> Gateway {
    let urls: Vec<String> = shards.iter().map(|r| r.url()).collect();
    let mut args = Vec::new();
    for u in &urls {
        args.extend(["--redis-shard", u.as_str()]);
    }
    herald().start(&args)
}

fn three_shards() -> [Redis; 3] {
    [Redis::start(), Redis::start(), Redis::start()]
}

/// Whether `channel`'s state (its meta key) is on `redis`.
fn holds(redis: &Redis, channel: &str) -> bool {
    redis.cmd(&["EXISTS", &meta_key(channel)]) == ":1"
}

/// The first `<prefix>-N` for which `pick(N's name)` holds.
fn channel_where(prefix: &str, pick: impl Fn(&str) -> bool) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|ch| pick(ch))
        .expect("a channel")
}

#[tokio::test]
async fn channels_spread_over_every_shard_and_reach_every_node_exactly_once() {
    let redis = three_shards();
    let shards: Vec<&Redis> = redis.iter().collect();
    let gws = [node_on(&shards), node_on(&shards)];
    all_ready(&gws).await;
    let channels: Vec<String> = (0..30).map(|i| format!("ch-{i}")).collect();
    let mut sub = gws[0].connected().await;
    for ch in &channels {
        assert_eq!(sub.subscribe(ch).await["offset"], 0);
    }
    let mut last = HashMap::new();
    for ch in &channels {
        for i in 0..3 {
            let (s, b) = gws[1].publish(ch, "e", json!({"i": i})).await;
            assert_eq!(s, 200, "{b}");
        }
        let (s, b) = gws[1].publish(ch, "last", json!(null)).await;
        assert_eq!(s, 200, "{b}");
        last.insert(ch.clone(), 4);
    }
    read_channels_until_last(&mut sub, &last).await;

    // Each channel's keys live on exactly the shard shard_of names, and
    // every shard holds some channels (and node a's subscriptions to them).
    for ch in &channels {
        let home = shard_of(ch, 3);
        for (i, r) in redis.iter().enumerate() {
            assert_eq!(holds(r, ch), i == home, "{ch} on shard {i} (home {home})");
        }
    }
    for (i, r) in redis.iter().enumerate() {
        let here = channels.iter().filter(|ch| shard_of(ch, 3) == i).count();
        assert!(here > 0, "no channel on shard {i}");
        let subscribed = r.call(&["PUBSUB", "CHANNELS", "herald:*"]);
        assert_eq!(subscribed.lines().count(), here, "shard {i}: {subscribed}");
    }
}

#[tokio::test]
async fn after_adding_a_shard_a_moved_channel_says_not_recovered_and_others_recover_exactly() {
    let redis = three_shards();
    let moved = channel_where("moved", |ch| shard_of(ch, 2) != shard_of(ch, 3));
    let stays = channel_where("stays", |ch| shard_of(ch, 2) == shard_of(ch, 3));
    let old = node_on(&[&redis[0], &redis[1]]);
    all_ready(std::slice::from_ref(&old)).await;
    let mut epochs = HashMap::new();
    for ch in [&moved, &stays] {
        let mut c = old.connected().await;
        epochs.insert(ch.clone(), c.subscribe(ch).await["epoch"].clone());
        for i in 0..5 {
            let (s, b) = old.publish(ch, "e", json!({"i": i})).await;
            assert_eq!(s, 200, "{b}");
        }
    }
    drop(old);

    let new = node_on(&[&redis[0], &redis[1], &redis[2]]);
    all_ready(std::slice::from_ref(&new)).await;
    for i in 5..8 {
        let (s, b) = new.publish(&stays, "e", json!({"i": i})).await;
        assert_eq!((s, &b["offset"]), (200, &json!(i + 1)), "{b}");
    }
    // Not moved: exactly what was missed.
    let mut c = new.connected().await;
    let r = subscribe_since(&mut c, &stays, &epochs[&stays], 5).await;
    assert_eq!(
        (r["recovered"].as_bool(), &r["epoch"], r["offset"].as_u64()),
        (Some(true), &epochs[&stays], Some(8)),
        "{r}"
    );
    for offset in 6..=8 {
        assert_eq!(c.message().await["offset"], offset);
    }
    // Moved: its history stayed behind; the client is told, in a new epoch.
    let r = subscribe_since(&mut new.connected().await, &moved, &epochs[&moved], 5).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_ne!(r["epoch"], epochs[&moved], "{r}");
    assert!(holds(&redis[2], &moved));
    // The stale state on the old shard goes, so a later change back cannot revive it.
    let before = &redis[shard_of(&moved, 2)];
    eventually("the old shard forgets the moved channel", || async {
        !holds(before, &moved)
    })
    .await;
}

#[tokio::test]
async fn a_dead_shard_leaves_the_other_shards_channels_working_and_nodes_ready() {
    let mut redis = three_shards();
    let gws = {
        let shards: Vec<&Redis> = redis.iter().collect();
        [node_on(&shards), node_on(&shards)]
    };
    all_ready(&gws).await;
    let on: Vec<String> = (0..3)
        .map(|i| channel_where("c", |ch| shard_of(ch, 3) == i))
        .collect();
    redis[2].kill();
    for gw in &gws {
        eventually("the node sees the shard down", || async {
            gw.metric("herald_broker_up{shard=\"2\"}").await == 0.0
        })
        .await;
        assert_eq!(gw.ready().await, 200, "ready while any shard is up");
    }
    for ch in &on[..2] {
        let mut sub = gws[0].connected().await;
        sub.subscribe(ch).await;
        let (s, b) = gws[1].publish(ch, "e", json!({"n": 1})).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(sub.message().await["data"], json!({"n": 1}));
    }
    let (s, b) = gws[1].publish(&on[2], "e", json!({"n": 1})).await;
    assert_eq!(s, 503, "{b}");
}
