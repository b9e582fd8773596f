//! The session core driven without a socket: commands in through
//! [`Session::command`], everything it says read back from its queue, and
//! its timers run on paused time.

use super::timers::Timers;
use super::*;
use crate::auth::{Auth, Claims, mint_hs256};
use crate::broker::memory::MemoryBroker;
use crate::config::{AuthConfig, Config, MemoryConfig};
use crate::hub::Hub;
use herald_proto::CloseCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// A node on the embedded broker, and the context its sessions share.
pub(crate) fn ctx_with(cfg: SessionConfig, auth: Option<AuthConfig>) -> Arc<SessionCtx> {
    let hub = Arc::new(Hub::new());
    let broker = MemoryBroker::start(
        &MemoryConfig::default(),
        hub.clone(),
        CancellationToken::new(),
    );
    let rules = Arc::new(Rules::from_config(&Config::default()));
    let presence = crate::presence::Presence::start(
        broker.clone(),
        Arc::clone(&rules),
        "n1".into(),
        Default::default(),
        CancellationToken::new(),
    );
    let node = Arc::new(Node::new(
        "n1".into(),
        hub,
        broker,
        Arc::clone(&rules),
        None,
    ));
    let tokens = Arc::new(Tokens::new(&["reconnect-secret".into()], cfg.reconnect_ttl));
    let auth = auth.map(|a| Arc::new(Auth::from_config(&a).expect("auth").expect("configured")));
    Arc::new(SessionCtx {
        node,
        rules,
        cfg,
        shutdown: Arc::new(Signal::default()),
        tokens,
        drain: Duration::from_secs(10),
        auth,
        users: UserConnections::new(64),
        links: Links::default(),
        hooks: None,
        presence,
    })
}

fn ctx() -> Arc<SessionCtx> {
    ctx_with(SessionConfig::default(), None)
}

fn hs256() -> AuthConfig {
    AuthConfig {
        jwt_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

fn jwt(user: &str, exp: u64) -> String {
    let claims = Claims {
        sub: Some(user.into()),
        exp,
        channels: None,
        channel: None,
        iss: None,
        aud: None,
        info: None,
    };
    mint_hs256(SECRET, &claims).expect("mint")
}

/// Sends one text command to the core.
async fn send(s: &mut Session, text: &str) {
    s.command(|| Command::decode(text)).await;
}

/// Everything queued so far, as JSON.
fn replies(o: &mut Opened) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(item) = o.rx.try_recv() {
        o.link.taken(item.size());
        out.push(serde_json::from_slice(item.encoded(Wire::Herald)).expect("JSON frame"));
    }
    out
}

fn ops(v: &[Value]) -> Vec<&str> {
    v.iter().map(|r| r["op"].as_str().unwrap_or("?")).collect()
}

async fn connected(ctx: &Arc<SessionCtx>) -> Opened {
    let mut o = Session::open(Arc::clone(ctx), Wire::Herald);
    send(&mut o.session, r#"{"op":"connect","id":1}"#).await;
    assert_eq!(ops(&replies(&mut o)), ["connected"]);
    o
}

fn timers(ctx: &Arc<SessionCtx>, o: &Opened) -> Timers {
    Timers::new(Arc::clone(ctx), Arc::clone(&o.shared), Arc::clone(&o.link))
}

/// Runs the timers for `d` of (paused) time, collecting the pings that fell due.
async fn run_for(t: &mut Timers, d: Duration) -> Vec<Option<String>> {
    let until = Instant::now() + d;
    let mut pings = Vec::new();
    while let Ok(due) = tokio::time::timeout_at(until, t.ping_due()).await {
        pings.push(due.token);
    }
    pings
}

#[tokio::test(start_paused = true)]
async fn subscribe_emit_and_receive_without_a_socket() {
    let ctx = ctx();
    let mut a = connected(&ctx).await;
    send(
        &mut a.session,
        r#"{"op":"subscribe","id":2,"channel":"news"}"#,
    )
    .await;
    let r = replies(&mut a);
    assert_eq!(ops(&r), ["subscribed"]);
    assert_eq!(r[0]["offset"], 0);
    send(
        &mut a.session,
        r#"{"op":"emit","id":3,"channel":"news","event":"e","data":{"n":1}}"#,
    )
    .await;
    let r = replies(&mut a);
    assert_eq!(ops(&r), ["message", "emitted"], "{r:?}");
    assert_eq!(r[0]["data"]["n"], 1);
    assert_eq!(r[1]["offset"], 1);
    a.session.close().await;
}

#[tokio::test(start_paused = true)]
async fn recovery_replays_the_missed_range_before_live_ones() {
    let ctx = ctx();
    let mut a = connected(&ctx).await;
    send(&mut a.session, r#"{"op":"subscribe","channel":"c"}"#).await;
    let epoch = replies(&mut a)[0]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    for n in 1..=5 {
        let emit = format!(r#"{{"op":"emit","channel":"c","event":"e","data":{n}}}"#);
        send(&mut a.session, &emit).await;
    }
    let mut b = connected(&ctx).await;
    let sub =
        format!(r#"{{"op":"subscribe","channel":"c","since":{{"epoch":"{epoch}","offset":2}}}}"#);
    send(&mut b.session, &sub).await;
    let r = replies(&mut b);
    assert_eq!(ops(&r), ["subscribed", "message", "message", "message"]);
    assert_eq!(r[0]["recovered"], true);
    let offsets: Vec<u64> = r[1..]
        .iter()
        .map(|m| m["offset"].as_u64().expect("n"))
        .collect();
    assert_eq!(offsets, [3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn resume_restores_channels_as_typed_results() {
    let ctx = ctx();
    let mut a = connected(&ctx).await;
    send(&mut a.session, r#"{"op":"subscribe","channel":"c"}"#).await;
    let r = replies(&mut a);
    let token = r[0]["reconnect_token"].as_str().expect("token").to_owned();
    let epoch = r[0]["epoch"].as_str().expect("epoch").to_owned();
    a.session.close().await;
    let mut b = Session::open(Arc::clone(&ctx), Wire::Herald);
    let connect = format!(
        r#"{{"op":"connect","resume":"{token}","positions":{{"c":{{"epoch":"{epoch}","offset":0}}}}}}"#
    );
    send(&mut b.session, &connect).await;
    let r = replies(&mut b);
    assert_eq!(r[0]["resumed"], true);
    assert_eq!(
        r[0]["channels"]["c"],
        serde_json::json!({"epoch": epoch, "offset": 0, "recovered": true})
    );
}

#[tokio::test(start_paused = true)]
async fn commands_over_the_rate_are_refused_with_their_id() {
    let cfg = SessionConfig {
        command_rate: 10,
        command_burst: 5,
        ..SessionConfig::default()
    };
    let ctx = ctx_with(cfg, None);
    let mut o = Session::open(Arc::clone(&ctx), Wire::Herald);
    for id in 0..6 {
        send(&mut o.session, &format!(r#"{{"op":"ping","id":{id}}}"#)).await;
    }
    let r = replies(&mut o);
    assert_eq!(ops(&r), ["pong", "pong", "pong", "pong", "pong", "error"]);
    assert_eq!(
        (r[5]["code"].as_str(), r[5]["id"].as_u64()),
        (Some("rate_limited"), Some(5))
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    send(&mut o.session, r#"{"op":"ping","id":9}"#).await;
    assert_eq!(
        ops(&replies(&mut o)),
        ["pong"],
        "refilled after a tenth of a second"
    );
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_never_connects_is_closed_at_connect_timeout() {
    let ctx = ctx();
    let o = Session::open(Arc::clone(&ctx), Wire::Herald);
    let mut t = timers(&ctx, &o);
    let limit = ctx.cfg.connect_timeout;
    run_for(&mut t, limit - Duration::from_millis(1)).await;
    assert_eq!(o.link.ending(), None);
    run_for(&mut t, Duration::from_millis(2)).await;
    assert_eq!(o.link.close_reason(), Some(CloseCode::ProtocolError));
}

#[tokio::test(start_paused = true)]
async fn a_ping_left_unanswered_closes_at_pong_timeout() {
    let ctx = ctx();
    let mut o = connected(&ctx).await;
    let mut t = timers(&ctx, &o);
    let (every, grace) = (ctx.cfg.ping_interval, ctx.cfg.pong_timeout);
    // Answered pings keep it open, well past the connect timeout.
    for _ in 0..3 {
        assert_eq!(run_for(&mut t, every).await.len(), 1);
        send(&mut o.session, r#"{"op":"pong"}"#).await;
    }
    assert_eq!(o.link.ending(), None);
    assert_eq!(run_for(&mut t, every).await.len(), 1, "a fourth ping");
    run_for(&mut t, grace - Duration::from_millis(1)).await;
    assert_eq!(o.link.ending(), None);
    run_for(&mut t, Duration::from_millis(2)).await;
    assert_eq!(o.link.close_reason(), Some(CloseCode::PingTimeout));
}

#[tokio::test(start_paused = true)]
async fn a_fresh_reconnect_token_is_pushed_at_half_life() {
    let cfg = SessionConfig {
        reconnect_ttl: Duration::from_secs(60),
        ping_interval: Duration::from_secs(25),
        pong_timeout: Duration::from_secs(1000),
        ..SessionConfig::default()
    };
    let ctx = ctx_with(cfg, None);
    let o = connected(&ctx).await;
    let mut t = timers(&ctx, &o);
    // Pings at 25, 50, 75, 100 s; the token of 0 s is half-spent at 30 s.
    let pings = run_for(&mut t, Duration::from_secs(101)).await;
    let pushed: Vec<bool> = pings.iter().map(Option::is_some).collect();
    assert_eq!(pushed, [false, true, false, true]);
    let fresh = pings[1].as_deref().expect("token");
    let claims = ctx
        .tokens
        .verify(fresh, crate::clock::now_secs())
        .expect("valid");
    assert_eq!(claims.sid, format!("{:016x}", o.link.id));
}

#[tokio::test(start_paused = true)]
async fn a_connection_closes_at_exp_plus_leeway_unless_refreshed() {
    let cfg = SessionConfig {
        pong_timeout: Duration::from_secs(1000),
        ..SessionConfig::default()
    };
    let ctx = ctx_with(cfg, Some(hs256()));
    let leeway = Duration::from_secs(5);
    let now = crate::clock::now_secs();
    for refresh in [false, true] {
        let mut o = Session::open(Arc::clone(&ctx), Wire::Herald);
        let connect = format!(r#"{{"op":"connect","token":"{}"}}"#, jwt("u1", now + 60));
        send(&mut o.session, &connect).await;
        assert_eq!(replies(&mut o)[0]["expires_at"], now + 60);
        let mut t = timers(&ctx, &o);
        if refresh {
            let r = format!(
                r#"{{"op":"refresh","id":4,"token":"{}"}}"#,
                jwt("u1", now + 600)
            );
            send(&mut o.session, &r).await;
            assert_eq!(ops(&replies(&mut o)), ["refreshed"]);
        }
        // `exp` is in whole seconds of the wall clock, which may tick
        // between minting and connecting: allow the second it falls in.
        let soon = Duration::from_secs(59) + leeway - Duration::from_millis(1);
        run_for(&mut t, soon).await;
        assert_eq!(o.link.ending(), None);
        run_for(&mut t, Duration::from_millis(2002)).await;
        let want = (!refresh).then_some(CloseCode::TokenExpired);
        assert_eq!(o.link.close_reason(), want, "refresh: {refresh}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_drain_closes_with_4000_within_its_window() {
    let ctx = ctx();
    let o = connected(&ctx).await;
    let mut t = timers(&ctx, &o);
    t.drain();
    assert!(t.draining());
    run_for(&mut t, ctx.drain.mul_f64(0.8) + Duration::from_millis(1)).await;
    assert_eq!(o.link.close_reason(), Some(CloseCode::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn unknown_ops_and_bad_frames_are_answered_not_fatal() {
    let ctx = ctx();
    let mut o = Session::open(Arc::clone(&ctx), Wire::Herald);
    send(&mut o.session, r#"{"op":"fly","id":3}"#).await;
    send(&mut o.session, r#"{"op":"subscribe","id":4,"channel":"c"}"#).await;
    send(&mut o.session, r#"{"id":5,"op":"#).await;
    let r = replies(&mut o);
    assert_eq!(ops(&r), ["error", "error", "error"]);
    assert!(r[0]["message"].as_str().expect("msg").contains("\"fly\""));
    assert_eq!(
        (r[0]["id"].as_u64(), r[1]["code"].as_str()),
        (Some(3), Some("not_connected"))
    );
    assert_eq!(r[2]["code"], "bad_request");
    assert_eq!(o.link.ending(), None);
}
