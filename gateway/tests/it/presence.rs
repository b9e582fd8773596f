//! Presence and join/leave (issue 16 items 1, 2): real nodes, the embedded
//! broker and Redis; a node killed with SIGKILL.

use crate::common::{Client, Gateway, Redis, config_file, eventually, herald, http_get};
use serde_json::{Value, json};
use std::path::PathBuf;

/// A config file: namespace `room` keeps presence with join/leave, `quiet`
/// presence only; a 1 s heartbeat and at most 3 clients per channel.
fn config() -> PathBuf {
    config_file(
        "presence",
        "[presence]\nheartbeat = \"1s\"\nmax_clients = 3\n\
         [namespaces.room]\npresence = true\njoin_leave = true\n\
         [namespaces.quiet]\npresence = true\n",
    )
}

fn start(cfg: &std::path::Path, redis: Option<&Redis>, id: &str) -> Gateway {
    let cfg = cfg.to_str().expect("path");
    match redis {
        Some(r) => herald().start(&["--config", cfg, "--redis-url", &r.url(), "--node-id", id]),
        None => herald().start(&["--config", cfg, "--node-id", id]),
    }
}

/// The sessions in `channel`'s presence, as a client asks for them.
async fn sessions(c: &mut Client, channel: &str) -> Vec<String> {
    let r = c.request(json!({"op":"presence","channel":channel})).await;
    assert_eq!(r["op"], "presence", "{r}");
    let mut s: Vec<String> = r["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| c["session"].as_str().expect("session").to_owned())
        .collect();
    s.sort();
    s
}

/// The next `join` or `leave` frame, skipping anything else.
async fn notice(c: &mut Client) -> Value {
    loop {
        let f = c.recv().await;
        if f["op"] == "join" || f["op"] == "leave" {
            return f;
        }
    }
}

/// A connected client and its session id.
async fn joined(gw: &Gateway) -> (Client, String) {
    let mut c = gw.client().await;
    let r = c.request(json!({"op":"connect"})).await;
    assert_eq!(r["op"], "connected", "{r}");
    let s = r["session"].as_str().expect("session").to_owned();
    (c, s)
}

#[tokio::test]
async fn presence_lists_every_subscriber_and_tells_joins_and_leaves_on_one_node() {
    let cfg = config();
    let gw = start(&cfg, None, "solo");
    let (mut a, sa) = joined(&gw).await;
    let (mut b, sb) = joined(&gw).await;
    a.subscribe("room:1").await;
    b.subscribe("room:1").await;
    let join = notice(&mut a).await;
    assert_eq!(
        (&join["op"], &join["channel"], &join["client"]["session"]),
        (&json!("join"), &json!("room:1"), &json!(sb)),
        "{join}"
    );
    assert_eq!(join["client"]["node"], "solo");
    let mut want = vec![sa.clone(), sb.clone()];
    want.sort();
    assert_eq!(sessions(&mut a, "room:1").await, want);
    let stats = a
        .request(json!({"op":"presence_stats","channel":"room:1"}))
        .await;
    assert_eq!(
        (stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some(2), Some(1)),
        "{stats}"
    );

    // Leaving by unsubscribe, then by disconnecting.
    b.request(json!({"op":"unsubscribe","channel":"room:1"}))
        .await;
    let leave = notice(&mut a).await;
    assert_eq!(
        (&leave["op"], &leave["client"]["session"]),
        (&json!("leave"), &json!(sb))
    );
    let (mut c, sc) = joined(&gw).await;
    c.subscribe("room:1").await;
    assert_eq!(notice(&mut a).await["client"]["session"], json!(sc));
    drop(c);
    let leave = notice(&mut a).await;
    assert_eq!(
        (&leave["op"], &leave["client"]["session"]),
        (&json!("leave"), &json!(sc))
    );
    assert_eq!(sessions(&mut a, "room:1").await, vec![sa.clone()]);

    // The API sees the same list.
    let (status, body) = http_get(gw.admin, "/api/v1/presence?channel=room%3A1").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["clients"], 1, "{v}");
    assert_eq!(v["list"][0]["session"], json!(sa));
}

#[tokio::test]
async fn a_full_presence_refuses_the_next_subscriber_and_other_namespaces_have_none() {
    let cfg = config();
    let gw = start(&cfg, None, "solo");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = gw.connected().await;
        c.subscribe("quiet:full").await;
        clients.push(c);
    }
    let mut late = gw.connected().await;
    let r = late
        .request(json!({"op":"subscribe","channel":"quiet:full"}))
        .await;
    assert_eq!(r["op"], "error", "{r}");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("presence is full")),
        "{r}"
    );
    assert_eq!(gw.metric("herald_presence_refused_total").await, 1.0);
    // No join/leave in a namespace without join_leave, and no presence
    // where it is off.
    let r = late
        .request(json!({"op":"presence","channel":"news:1"}))
        .await;
    assert_eq!(
        (&r["op"], &r["code"]),
        (&json!("error"), &json!("bad_request")),
        "{r}"
    );
    let (status, _) = http_get(gw.admin, "/api/v1/presence?channel=news:1").await;
    assert_eq!(status, 400);
    clients[0]
        .silent_for(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn presence_spans_nodes_and_a_killed_nodes_clients_expire_and_leave() {
    let redis = Redis::start();
    let cfg = config();
    let a = start(&cfg, Some(&redis), "a");
    let mut b = start(&cfg, Some(&redis), "b");
    let c = start(&cfg, Some(&redis), "c");
    for gw in [&a, &b, &c] {
        eventually("node ready", || async { gw.ready().await == 200 }).await;
    }
    let mut on_a = a.connected().await;
    on_a.subscribe("room:x").await;
    let (mut on_b, sb) = joined(&b).await;
    on_b.subscribe("room:x").await;
    let mut on_c = c.connected().await;
    on_c.subscribe("room:x").await;
    let everyone = sessions(&mut on_a, "room:x").await;
    assert_eq!(everyone.len(), 3, "{everyone:?}");
    assert!(everyone.contains(&sb));
    // Drain the joins a saw.
    assert_eq!(notice(&mut on_a).await["op"], "join");
    assert_eq!(notice(&mut on_a).await["op"], "join");

    // b dies without a word: its client is left out within 2 heartbeats,
    // and the survivors are told it left.
    b.signal("KILL");
    b.wait_exit(std::time::Duration::from_secs(5));
    let leave = notice(&mut on_a).await;
    assert_eq!(
        (&leave["op"], &leave["client"]["session"]),
        (&json!("leave"), &json!(sb)),
        "{leave}"
    );
    assert_eq!((&leave["client"]["node"]), &json!("b"));
    let leave_c = notice(&mut on_c).await;
    assert_eq!(leave_c["client"]["session"], json!(sb));
    // Already swept: the answer leaves it out.
    assert_eq!(sessions(&mut on_c, "room:x").await.len(), 2);
    assert!(
        a.metric("herald_presence_expired_total").await
            + c.metric("herald_presence_expired_total").await
            >= 1.0
    );
    // Exactly one leave: nothing more arrives for b's client.
    on_a.silent_for(std::time::Duration::from_millis(2500))
        .await;
}

#[tokio::test]
async fn presence_shows_the_info_the_connection_token_carries() {
    const SECRET: &str = "presence-test-secret-of-32-bytes!!";
    let cfg = config_file(
        "presence-info",
        &format!(
            "[auth]\njwt_secret = \"{SECRET}\"\n[namespaces.room]\npresence = true\njoin_leave = true\n"
        ),
    );
    let gw = herald().start(&["--config", cfg.to_str().expect("path")]);
    let token = |sub: &str, info: Value| {
        let claims = herald::auth::Claims {
            sub: Some(sub.to_owned()),
            exp: herald::clock::now_secs() + 300,
            channels: None,
            channel: None,
            iss: None,
            aud: None,
            info: Some(info),
        };
        herald::auth::mint_hs256(SECRET, &claims).expect("mint")
    };
    let mut ada = gw.client().await;
    let r = ada
        .request(json!({"op":"connect","token":token("ada", json!({"name":"Ada L."}))}))
        .await;
    assert_eq!(r["op"], "connected", "{r}");
    ada.subscribe("room:info").await;
    let mut bob = gw.client().await;
    bob.request(json!({"op":"connect","token":token("bob", json!({"name":"Bob"}))}))
        .await;
    bob.subscribe("room:info").await;
    let join = notice(&mut ada).await;
    assert_eq!(
        (&join["client"]["user"], &join["client"]["info"]),
        (&json!("bob"), &json!({"name":"Bob"})),
        "{join}"
    );
    let r = bob
        .request(json!({"op":"presence","channel":"room:info"}))
        .await;
    let infos: Vec<&Value> = r["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| &c["info"])
        .collect();
    assert_eq!(
        infos,
        [&json!({"name":"Ada L."}), &json!({"name":"Bob"})],
        "{r}"
    );
}
