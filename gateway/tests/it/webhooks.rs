//! Webhooks (issue 16 item 4): a real receiver process (Python, verifying
//! the HMAC signature), real nodes on a real Redis; a node killed with
//! SIGKILL.

use crate::common::{Backend, Gateway, Redis, config_file, eventually, herald};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECRET: &str = "webhook-test-secret-0123";

fn receiver() -> Backend {
    Backend::python(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhook_receiver.py"),
    )
}

fn config(url: &str) -> PathBuf {
    config_file(
        "webhooks",
        &format!(
            "[presence]\nheartbeat = \"500ms\"\n\
             [webhooks]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n"
        ),
    )
}

fn node(cfg: &Path, redis: &Redis, id: &str) -> Gateway {
    herald().start(&[
        "--config",
        cfg.to_str().expect("path"),
        "--redis-url",
        &redis.url(),
        "--node-id",
        id,
    ])
}

/// The receiver's valid events with `event` on `channel`.
async fn events(rx: &Backend, event: &str, channel: &str) -> Vec<Value> {
    let all = rx.get_json("/events").await;
    all["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == event && e["channel"] == channel)
        .cloned()
        .collect()
}

async fn ready(gws: &[&Gateway]) {
    for gw in gws {
        eventually("node ready", || async { gw.ready().await == 200 }).await;
    }
}

#[tokio::test]
async fn a_channel_is_occupied_once_and_vacated_only_when_its_last_node_leaves() {
    let rx = receiver();
    let redis = Redis::start();
    let cfg = config(&rx.url("/hook"));
    let (a, b) = (node(&cfg, &redis, "a"), node(&cfg, &redis, "b"));
    ready(&[&a, &b]).await;
    // Both nodes race for the channel's first subscriber.
    let (mut ca, mut cb) = (a.connected().await, b.connected().await);
    let sa = ca.send(json!({"op":"subscribe","channel":"room:1","id":1}));
    let sb = cb.send(json!({"op":"subscribe","channel":"room:1","id":1}));
    tokio::join!(sa, sb);
    assert_eq!(ca.recv().await["op"], "subscribed");
    assert_eq!(cb.recv().await["op"], "subscribed");
    eventually("occupied sent", || async {
        events(&rx, "channel_occupied", "room:1").await.len() == 1
    })
    .await;
    // One node leaves: still occupied on the other.
    ca.request(json!({"op":"unsubscribe","channel":"room:1"}))
        .await;
    let mut probe = a.connected().await;
    probe.subscribe("probe:1").await;
    eventually("a later event went out", || async {
        events(&rx, "channel_occupied", "probe:1").await.len() == 1
    })
    .await;
    assert!(events(&rx, "channel_vacated", "room:1").await.is_empty());
    // The last one leaves: vacated, once.
    cb.request(json!({"op":"unsubscribe","channel":"room:1"}))
        .await;
    eventually("vacated sent", || async {
        events(&rx, "channel_vacated", "room:1").await.len() == 1
    })
    .await;
    assert_eq!(
        events(&rx, "channel_occupied", "room:1").await.len(),
        1,
        "no duplicate occupied"
    );
    let all = rx.get_json("/events").await;
    assert_eq!(all["rejected"], 0, "every signature verified");
    // Users connecting and disconnecting.
    let connected = all["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "user_connected")
        .count();
    assert!(connected >= 3, "{all}");
    drop(probe);
    eventually("user_disconnected sent", || async {
        let all = rx.get_json("/events").await;
        all["events"]
            .as_array()
            .is_some_and(|v| v.iter().any(|e| e["event"] == "user_disconnected"))
    })
    .await;
}

#[tokio::test]
async fn a_killed_nodes_channels_are_vacated_by_the_survivors() {
    let rx = receiver();
    let redis = Redis::start();
    let cfg = config(&rx.url("/hook"));
    let (a, mut b) = (node(&cfg, &redis, "a"), node(&cfg, &redis, "b"));
    ready(&[&a, &b]).await;
    let mut on_b = b.connected().await;
    on_b.subscribe("solo:1").await;
    let mut both_a = a.connected().await;
    both_a.subscribe("shared:1").await;
    let mut both_b = b.connected().await;
    both_b.subscribe("shared:1").await;
    eventually("occupied sent", || async {
        events(&rx, "channel_occupied", "solo:1").await.len() == 1
    })
    .await;
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5));
    eventually("the survivors vacate the dead node's channel", || async {
        events(&rx, "channel_vacated", "solo:1").await.len() == 1
    })
    .await;
    // A channel that still has a subscriber on a live node stays occupied.
    both_a.silent_for(Duration::from_millis(1500)).await;
    assert!(events(&rx, "channel_vacated", "shared:1").await.is_empty());
}

#[tokio::test]
async fn a_failed_delivery_is_retried_until_the_receiver_takes_it() {
    let rx = receiver();
    let redis = Redis::start();
    let cfg = config(&rx.url("/hook"));
    let a = node(&cfg, &redis, "a");
    ready(&[&a]).await;
    let mut c = a.connected().await;
    c.subscribe("flaky:1").await;
    eventually("delivered after a 500", || async {
        events(&rx, "channel_occupied", "flaky:1").await.len() == 1
    })
    .await;
    let ev = &events(&rx, "channel_occupied", "flaky:1").await[0];
    let all = rx.get_json("/events").await;
    assert_eq!(all["attempts"][ev["id"].as_str().expect("id")], 2, "{all}");
    assert!(
        a.metric("herald_webhooks_total{event=\"channel_occupied\",outcome=\"retried\"}")
            .await
            >= 1.0
    );
    assert_eq!(ev["node"], "a");
}
