//! Connect authentication, channel permissions and per-user limits, against
//! real `herald serve` processes.

use crate::common::{Client, Gateway, eventually, herald};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const SECRET: &str = "integration-test-hs256-secret-32-bytes+";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    herald::clock::now_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

fn hs(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        &claims,
    )
}

fn user(sub: &str) -> String {
    hs(json!({"sub": sub, "exp": now() + 600}))
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).expect("key"))
        .expect("rsa")
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture("ec_private.pem")).expect("key")).expect("ec")
}

/// Sends `connect` with `token` and returns the reply (or error) frame.
async fn connect(gw: &Gateway, token: Option<&str>) -> (Client, Value) {
    let mut c = gw.client().await;
    let mut cmd = json!({"op":"connect"});
    if let Some(t) = token {
        cmd["token"] = json!(t);
    }
    let r = c.request(cmd).await;
    (c, r)
}

/// Asserts a connect is refused with `error unauthorized` and then `close`.
async fn refused(gw: &Gateway, token: Option<&str>, close: u16) -> String {
    let (mut c, r) = connect(gw, token).await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "{r}"
    );
    let (code, _) = c.closed().await;
    assert_eq!(code, close, "after {r}");
    r["message"].as_str().unwrap_or_default().to_owned()
}

fn hs_node(extra: &[&str]) -> Gateway {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    herald().start(&args)
}

#[tokio::test]
async fn hs256_connect_tokens_are_checked() {
    let gw = hs_node(&[]);
    let (_ok, r) = connect(&gw, Some(&user("42"))).await;
    assert_eq!(
        (r["op"].as_str(), r["user"].as_str()),
        (Some("connected"), Some("42")),
        "{r}"
    );
    assert!(r["expires_at"].as_u64().expect("expires_at") > now());

    let msg = refused(&gw, None, 4500).await;
    assert!(msg.contains("token is required"), "{msg}");
    let msg = refused(&gw, Some("garbage"), 4500).await;
    assert!(msg.contains("not a valid JWT"), "{msg}");
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"some-other-secret-of-32-bytes-or-more"),
        None,
        &json!({"sub":"42","exp": now() + 600}),
    );
    let msg = refused(&gw, Some(&forged), 4500).await;
    assert!(msg.contains("signature"), "{msg}");
    // `alg: none` with no signature at all.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(json!({"sub":"42","exp": now() + 600}).to_string())
    );
    refused(&gw, Some(&none), 4500).await;
    // A validly signed RS256 token is still refused: the node is pinned to HS256.
    let rs = sign(
        Algorithm::RS256,
        &rsa_key(),
        None,
        &json!({"sub":"42","exp": now() + 600}),
    );
    let msg = refused(&gw, Some(&rs), 4500).await;
    assert!(msg.contains("algorithm"), "{msg}");
    // No sub, no exp, not yet valid.
    refused(&gw, Some(&hs(json!({"exp": now() + 600}))), 4500).await;
    refused(&gw, Some(&hs(json!({"sub":"42"}))), 4500).await;
    refused(
        &gw,
        Some(&hs(
            json!({"sub":"42","exp": now() + 600, "nbf": now() + 300}),
        )),
        4500,
    )
    .await;
    // Expired: 4003, so the client fetches a new token and reconnects.
    let msg = refused(&gw, Some(&hs(json!({"sub":"42","exp": now() - 60}))), 4003).await;
    assert!(msg.contains("expired"), "{msg}");
    // Nothing works before connect, and the node still serves the good client.
    assert!(gw.metric("herald_auth_total").await >= 9.0);
    let (mut c, r) = connect(&gw, Some(&user("7"))).await;
    assert_eq!(r["op"], "connected");
    c.subscribe("news").await;
}

#[tokio::test]
async fn herald_token_mints_tokens_the_node_accepts() {
    let gw = hs_node(&[]);
    let out = herald()
        .command()
        .args([
            "token",
            "--sub",
            "alice",
            "--channels",
            "news:*",
            "--ttl",
            "10m",
        ])
        .env("HERALD_JWT_SECRET", SECRET)
        .output()
        .expect("run herald token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let (_c, r) = connect(&gw, Some(token.trim())).await;
    assert_eq!(
        (r["op"].as_str(), r["user"].as_str()),
        (Some("connected"), Some("alice")),
        "{r}"
    );
    let out = herald()
        .command()
        .args(["token", "--sub", "alice"])
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .expect("run herald token");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no HS256 secret"));
}

#[tokio::test]
async fn rs256_and_es256_keys_pin_their_algorithm() {
    let claims = json!({"sub":"42","exp": now() + 600});
    let rsa_pub = fixture("rsa_public.pem");
    let gw = herald().start(&["--jwt-public-key", rsa_pub.to_str().expect("path")]);
    let (_c, r) = connect(
        &gw,
        Some(&sign(Algorithm::RS256, &rsa_key(), None, &claims)),
    )
    .await;
    assert_eq!(r["op"], "connected", "{r}");
    // Algorithm confusion: an HS256 token whose "secret" is the public key.
    let pem = std::fs::read(&rsa_pub).expect("pem");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem),
        None,
        &claims,
    );
    refused(&gw, Some(&confused), 4500).await;
    refused(
        &gw,
        Some(&sign(Algorithm::ES256, &ec_key(), None, &claims)),
        4500,
    )
    .await;

    let ec_pub = fixture("ec_public.pem");
    let gw = herald().start(&["--jwt-public-key", ec_pub.to_str().expect("path")]);
    let (_c, r) = connect(&gw, Some(&sign(Algorithm::ES256, &ec_key(), None, &claims))).await;
    assert_eq!(r["op"], "connected", "{r}");
    refused(
        &gw,
        Some(&sign(Algorithm::RS256, &rsa_key(), None, &claims)),
        4500,
    )
    .await;
}

#[tokio::test]
async fn jwks_file_is_reread_when_it_changes() {
    let dir = tempdir();
    let jwks = dir.join("jwks.json");
    std::fs::copy(fixture("jwks_rsa.json"), &jwks).expect("copy");
    let gw = herald().start(&["--jwks-file", jwks.to_str().expect("path")]);
    let claims = json!({"sub":"42","exp": now() + 600});
    let rs = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &claims);
    let es = sign(Algorithm::ES256, &ec_key(), Some("ec-1"), &claims);
    let (_c, r) = connect(&gw, Some(&rs)).await;
    assert_eq!(r["op"], "connected", "{r}");
    let msg = refused(&gw, Some(&es), 4500).await;
    assert!(msg.contains("key id"), "{msg}");
    // A half-written file keeps the old keys. The node looks at the file
    // when verifying (at most once a second): connect until it has.
    std::fs::write(&jwks, "{\"keys\": [").expect("write");
    eventually("the half-written file is read and refused", async || {
        let (_c, r) = connect(&gw, Some(&rs)).await;
        assert_eq!(r["op"], "connected", "old keys still verify: {r}");
        gw.logs().contains("JWKS reload failed")
    })
    .await;
    // Rotation: the new key works without a restart.
    std::fs::copy(fixture("jwks_rsa_ec.json"), &jwks).expect("copy");
    eventually("the new JWKS key is accepted", || async {
        let (_c, r) = connect(&gw, Some(&es)).await;
        r["op"] == "connected"
    })
    .await;
    assert!(gw.metric("herald_jwks_reloads_total").await >= 2.0);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "herald-auth-{}-{}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

#[tokio::test]
async fn expiry_closes_with_4003_unless_refreshed() {
    let dir = tempdir();
    let cfg = dir.join("herald.toml");
    std::fs::write(
        &cfg,
        format!("[auth]\njwt_secret = \"{SECRET}\"\nleeway = \"0s\"\n"),
    )
    .expect("write");
    let gw = herald().start(&["--config", cfg.to_str().expect("path")]);
    let short = hs(json!({"sub":"42","exp": now() + 2}));
    let (mut quiet, _) = connect(&gw, Some(&short)).await;
    let (mut keen, _) = connect(&gw, Some(&short)).await;
    // Refreshing as another user is refused; the connection carries on.
    let r = keen
        .request(json!({"op":"refresh","token": user("43")}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "{r}"
    );
    let r = keen
        .request(json!({"op":"refresh","token": user("42")}))
        .await;
    assert_eq!(r["op"], "refreshed", "{r}");
    assert!(r["expires_at"].as_u64().expect("expires_at") > now() + 500);
    let (code, notice) = quiet.closed().await;
    assert_eq!(code, 4003);
    assert_eq!(notice.expect("notice")["reconnect"], true);
    // The refreshed connection outlives the first token.
    keen.subscribe("after").await;
    let (status, _) = gw.publish("after", "e", json!(1)).await;
    assert_eq!(status, 200);
    assert_eq!(keen.message().await["data"], 1);
}

const RULES: &str = r#"
[channels]
subscribe = "claim"

[namespaces.public]
subscribe = "any"
client_emit = true

[namespaces.chat]
subscribe = "claim"
client_emit = true

[namespaces.ticker]
history_size = 2
"#;

fn rules_node() -> Gateway {
    let dir = tempdir();
    let cfg = dir.join("herald.toml");
    std::fs::write(&cfg, format!("[auth]\njwt_secret = \"{SECRET}\"\n{RULES}")).expect("write");
    herald().start(&["--config", cfg.to_str().expect("path")])
}

async fn forbidden(c: &mut Client, cmd: Value) -> String {
    let ch = cmd["channel"].clone();
    let r = c.request(cmd).await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{r}"
    );
    assert_eq!(r["channel"], ch, "the refusal names the channel");
    r["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn namespaces_user_channels_and_subscribe_tokens() {
    let gw = rules_node();
    let alice_token = hs(json!({"sub":"42","exp": now() + 600, "channels": ["chat:room-*"]}));
    let (mut alice, r) = connect(&gw, Some(&alice_token)).await;
    assert_eq!(r["op"], "connected", "{r}");
    let sub = |ch: &str| json!({"op":"subscribe","channel":ch});

    // Namespace rules: `public` is open to anyone, the rest needs a claim.
    alice.subscribe("public:news").await;
    alice.subscribe("chat:room-1").await;
    let msg = forbidden(&mut alice, sub("chat:lobby")).await;
    assert!(msg.contains("channels"), "{msg}");
    forbidden(&mut alice, sub("private:x")).await;
    forbidden(&mut alice, sub("nonamespace")).await;

    // User channels.
    alice.subscribe("inbox#42").await;
    alice.subscribe("dm#41,42").await;
    let msg = forbidden(&mut alice, sub("inbox#43")).await;
    assert!(
        !msg.contains("43"),
        "nothing about the other user leaks: {msg}"
    );

    // Subscribe tokens grant exactly one channel to exactly one user.
    let grant = |sub_: &str, ch: &str| hs(json!({"sub":sub_, "channel":ch, "exp": now() + 60}));
    let r = alice
        .request(json!({"op":"subscribe","channel":"vip:lounge","token":grant("42","vip:lounge")}))
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    let msg = forbidden(
        &mut alice,
        json!({"op":"subscribe","channel":"vip:bar","token":grant("42","vip:lounge")}),
    )
    .await;
    assert!(msg.contains("another channel"), "{msg}");
    forbidden(
        &mut alice,
        json!({"op":"subscribe","channel":"vip:bar","token":grant("43","vip:bar")}),
    )
    .await;
    let expired = hs(json!({"sub":"42","channel":"vip:bar","exp": now() - 60}));
    let msg = forbidden(
        &mut alice,
        json!({"op":"subscribe","channel":"vip:bar","token":expired}),
    )
    .await;
    assert!(msg.contains("expired"), "{msg}");

    // Client emit: on where the namespace allows it, and only on readable channels.
    let emit = |ch: &str| json!({"op":"emit","channel":ch,"event":"e","data":1});
    let r = alice.request(emit("public:news")).await;
    assert_eq!(r["op"], "emitted", "{r}");
    let r = alice.request(emit("chat:room-1")).await;
    assert_eq!(r["op"], "emitted", "{r}");
    forbidden(&mut alice, emit("chat:lobby")).await;
    let msg = forbidden(&mut alice, emit("inbox#42")).await;
    assert!(msg.contains("API"), "{msg}");
    forbidden(&mut alice, emit("vip:lounge")).await;

    // The server may publish to a user channel; only its user receives it.
    let (mut bob, _) = connect(&gw, Some(&user("43"))).await;
    bob.subscribe("inbox#43").await;
    let (status, _) = gw.publish("inbox#42", "note", json!("for alice")).await;
    assert_eq!(status, 200);
    loop {
        let m = alice.message().await;
        if m["channel"] == "inbox#42" {
            assert_eq!(m["data"], "for alice");
            break;
        }
    }
    // An absence on another channel: no later frame would reveal it, so wait.
    bob.silent_for(Duration::from_millis(200)).await;
    assert!(gw.metric("herald_permission_denials_total").await >= 8.0);
}

#[tokio::test]
async fn namespaces_override_history() {
    let gw = rules_node();
    let (mut c, _) = connect(&gw, Some(&user("1"))).await;
    for ch in ["ticker:a", "public:a"] {
        let mut epoch = Value::Null;
        for i in 0..5 {
            let (status, body) = gw.publish(ch, "tick", json!(i)).await;
            assert_eq!(status, 200, "{body}");
            epoch = body["epoch"].clone();
        }
        // Recovering 4 missed publications: `ticker` keeps only 2.
        let r = c
            .request(json!({"op":"subscribe","channel":ch,"since":{"epoch":epoch,"offset":1}, "token": hs(json!({"sub":"1","channel":ch,"exp":now()+60}))}))
            .await;
        assert_eq!(r["op"], "subscribed", "{r}");
        let expect = ch == "public:a";
        assert_eq!(r["recovered"], expect, "{ch}: {r}");
    }
}

#[tokio::test]
async fn per_user_connection_limit() {
    let gw = hs_node(&["--max-connections-per-user", "2"]);
    let token = user("42");
    let (first, _) = connect(&gw, Some(&token)).await;
    let (_second, _) = connect(&gw, Some(&token)).await;
    let (mut third, r) = connect(&gw, Some(&token)).await;
    assert_eq!(r["code"], "too_many_connections", "{r}");
    assert_eq!(third.closed().await.0, 4504);
    let (_other, r) = connect(&gw, Some(&user("43"))).await;
    assert_eq!(r["op"], "connected", "other users are not affected");
    drop(first);
    eventually("a closed connection frees its slot", || async {
        connect(&gw, Some(&token)).await.1["op"] == "connected"
    })
    .await;
}

#[tokio::test]
async fn reconnect_tokens_resume_only_their_own_user() {
    let gw = hs_node(&[]);
    let (mut alice, _) = connect(&gw, Some(&user("42"))).await;
    let r = alice.subscribe("public:x").await;
    let resume = r["reconnect_token"].as_str().expect("token").to_owned();
    let mut bob = gw.client().await;
    let r = bob
        .request(json!({"op":"connect","token":user("43"),"resume":resume}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["resumed"].as_bool()),
        (Some("connected"), Some(false)),
        "{r}"
    );
    let mut again = gw.client().await;
    let r = again
        .request(json!({"op":"connect","token":user("42"),"resume":resume}))
        .await;
    assert_eq!(r["resumed"], true, "{r}");
    assert!(r["channels"]["public:x"].is_object(), "{r}");
}

#[tokio::test]
async fn resume_applies_channel_rules_again() {
    let gw = rules_node();
    let claims = hs(json!({"sub":"42","exp": now() + 600, "channels": ["chat:*"]}));
    let (mut alice, _) = connect(&gw, Some(&claims)).await;
    alice.subscribe("public:p").await;
    alice.subscribe("chat:a").await;
    let grant = hs(json!({"sub":"42","channel":"vip:x","exp": now() + 60}));
    let r = alice
        .request(json!({"op":"subscribe","channel":"vip:x","token":grant}))
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    let resume = r["reconnect_token"].as_str().expect("token").to_owned();
    drop(alice);
    // The backend has since taken `chat:*` away from this user.
    let mut again = gw.client().await;
    let r = again
        .request(json!({"op":"connect","token":user("42"),"resume":resume}))
        .await;
    assert_eq!(r["resumed"], true, "{r}");
    let ch = &r["channels"];
    assert!(ch["public:p"]["epoch"].is_string(), "{r}");
    assert!(
        ch["vip:x"]["epoch"].is_string(),
        "granted by a subscribe token: {r}"
    );
    assert_eq!(ch["chat:a"]["error"]["code"], "forbidden", "{r}");
    let (status, _) = gw.publish("chat:a", "e", json!(1)).await;
    assert_eq!(status, 200);
    let (status, _) = gw.publish("vip:x", "e", json!(2)).await;
    assert_eq!(status, 200);
    assert_eq!(again.message().await["data"], 2, "chat:a is not delivered");
}
