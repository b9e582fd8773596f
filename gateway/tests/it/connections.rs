//! Connections that never become sessions, tested as an attacker would:
//! half-sent requests, one address over its cap, spoofed and real
//! forwarding headers, PROXY protocol from a real HAProxy, and a node at its
//! file-descriptor limit.

use crate::common::*;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HALF_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\n";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A TCP connection from `from` that sends half a request head and waits.
async fn half_request(to: SocketAddr, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    let mut s = socket.connect(to).await.expect("connect");
    s.write_all(HALF_REQUEST).await.expect("write");
    s
}

/// Everything the server sends until it closes the connection.
async fn read_until_closed(mut s: TcpStream) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    String::from_utf8_lossy(&buf).into_owned()
}

/// A subscribed client from `from` that must keep receiving.
async fn subscriber(gw: &Gateway, from: &str, channel: &str) -> Client {
    let mut c = Client::try_open(gw.public, Some(ip(from)), &[])
        .await
        .expect("a client from another address connects");
    assert_eq!(c.request(json!({"op":"connect"})).await["op"], "connected");
    c.subscribe(channel).await;
    c
}

async fn receives(gw: &Gateway, c: &mut Client, channel: &str, n: u64) {
    let (status, body) = gw.publish(channel, "e", json!(n)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.message().await["data"], n);
}

#[tokio::test]
async fn thousands_of_half_requests_are_closed_at_the_header_timeout() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let gw = herald().start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--header-timeout",
        "1s",
        "--max-connections-per-ip",
        "0",
        "--connection-rate-per-ip",
        "0",
    ]);
    let mut calm = subscriber(&gw, "127.0.0.2", "calm").await;
    let mut attack = Vec::new();
    for _ in 0..2000 {
        attack.push(half_request(gw.public, ip("127.0.0.1")).await);
    }
    receives(&gw, &mut calm, "calm", 1).await;
    for s in attack {
        assert_eq!(read_until_closed(s).await, "", "closed without an answer");
    }
    eventually(
        "every half-request counted as a request-head timeout",
        async || gw.metric("herald_connection_timeouts_total").await >= 2000.0,
    )
    .await;
    receives(&gw, &mut calm, "calm", 2).await;
}

#[tokio::test]
async fn one_address_over_its_cap_is_refused_while_others_are_served() {
    // The API on the admin listener, which no per-address limit charges.
    let gw = herald().start(&[
        "--max-connections-per-ip",
        "20",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(half_request(gw.public, ip("127.0.0.1")).await);
    }
    let over = half_request(gw.public, ip("127.0.0.1")).await;
    let answer = read_until_closed(over).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    let refused = Client::try_open(gw.public, Some(ip("127.0.0.1")), &[]).await;
    assert!(
        refused.is_err(),
        "a WebSocket from the same address is refused too"
    );
    // Other addresses are not affected.
    let mut a = subscriber(&gw, "127.0.0.2", "news").await;
    let mut b = subscriber(&gw, "127.0.0.3", "news").await;
    receives(&gw, &mut a, "news", 1).await;
    assert_eq!(b.message().await["data"], 1);
    assert!(gw.metric("herald_connections_refused_total").await >= 2.0);
    // A slot given back is free again.
    drop(held.pop());
    eventually("the address may connect again", async || {
        Client::try_open(gw.public, Some(ip("127.0.0.1")), &[])
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let gw = herald().start(&[
        "--trusted-proxy",
        "127.0.0.3",
        "--max-connections-per-ip",
        "1",
    ]);
    let xff = |client: &'static str| [("X-Forwarded-For", client)];
    // An untrusted peer's header is ignored: it is charged as itself.
    let first = Client::try_open(gw.public, Some(ip("127.0.0.2")), &xff("198.51.100.1")).await;
    assert!(first.is_ok());
    // Refused at accept (a best-effort 429, then a close), before any header is read.
    let spoofed = Client::try_open(gw.public, Some(ip("127.0.0.2")), &xff("198.51.100.2")).await;
    assert!(spoofed.is_err(), "a spoofed header gains nothing");
    // A trusted proxy's header names the client that is charged.
    let a = Client::try_open(gw.public, Some(ip("127.0.0.3")), &xff("203.0.113.5")).await;
    assert!(a.is_ok(), "{:?}", a.err());
    let again = Client::try_open(
        gw.public,
        Some(ip("127.0.0.3")),
        &xff("6.6.6.6, 203.0.113.5"),
    )
    .await;
    let err = again
        .err()
        .expect("the same client behind the proxy is at its cap");
    assert!(err.contains("429"), "{err}");
    let other = Client::try_open(gw.public, Some(ip("127.0.0.3")), &xff("203.0.113.6")).await;
    assert!(
        other.is_ok(),
        "another client behind the proxy: {:?}",
        other.err()
    );
}

#[tokio::test]
async fn haproxy_proxy_protocol_names_the_client() {
    let gw = herald().start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        "1",
    ]);
    let lb = HaProxy::start([&gw], true);
    let through = |from: &'static str| Client::try_open(lb.addr, Some(ip(from)), &[]);
    let mut a = through("127.0.0.2")
        .await
        .expect("first client through HAProxy");
    assert_eq!(a.request(json!({"op":"connect"})).await["op"], "connected");
    a.subscribe("news").await;
    // The node sees 127.0.0.2, not HAProxy's 127.0.0.1, so its cap applies
    // to that client only.
    assert!(
        through("127.0.0.2").await.is_err(),
        "second from the same client"
    );
    let mut b = through("127.0.0.3")
        .await
        .expect("another client through HAProxy");
    assert_eq!(b.request(json!({"op":"connect"})).await["op"], "connected");
    receives(&gw, &mut a, "news", 1).await;
    // Straight to the node, without the header: refused.
    let direct = Client::try_open(gw.public, Some(ip("127.0.0.4")), &[]).await;
    assert!(direct.is_err());
    let (_, metrics) = http_get(gw.admin, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("herald_connections_refused_total{reason=\"proxy_header\"} ")
            && !l.ends_with(" 0")),
        "counted as a proxy_header refusal"
    );
}

#[tokio::test]
async fn at_the_descriptor_limit_probes_answer_and_sessions_are_served() {
    let dir = std::env::temp_dir().join(format!("herald-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The node under a 300-descriptor limit (hard too, so it cannot raise it).
    let wrapper = dir.join("herald-300-fds");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 300\nexec {} \"$@\"\n",
            herald().path().display()
        ),
    )
    .expect("wrapper");
    std::process::Command::new("chmod")
        .args(["+x", wrapper.to_str().expect("path")])
        .status()
        .expect("chmod");
    let gw = Herald::at(&wrapper).start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--fd-reserve",
        "100",
        "--header-timeout",
        "60s",
        "--max-connections-per-ip",
        "0",
        "--connection-rate-per-ip",
        "0",
    ]);
    let mut calm = subscriber(&gw, "127.0.0.2", "calm").await;
    let mut attack = Vec::new();
    for _ in 0..260 {
        attack.push(half_request(gw.public, ip("127.0.0.1")).await);
    }
    // 300 - 100 reserved = 200 public sockets (the subscriber's among them):
    // the rest are answered 503 at once and closed.
    eventually("the sockets past the ceiling are refused", async || {
        gw.metric("herald_connections_refused_total").await >= 61.0
    })
    .await;
    let (mut held, mut refused) = (Vec::new(), 0);
    for s in attack {
        let mut buf = [0u8; 64];
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(s),
            Ok(n) => {
                assert!(buf[..n].starts_with(b"HTTP/1.1 503"), "{:?}", &buf[..n]);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((held.len(), refused), (199, 61));
    assert_eq!(http_get(gw.admin, "/healthz").await.0, 200);
    let (status, body) = http_get(gw.admin, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "near the file descriptor limit\n")
    );
    assert_eq!(http_get(gw.admin, "/metrics").await.0, 200);
    receives(&gw, &mut calm, "calm", 1).await;
    drop(held);
    eventually("ready again once the sockets are gone", async || {
        gw.ready().await == 200
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
