//! Traces reach an OTLP collector with the caller's trace context, and logs
//! can be JSON lines.

use crate::common::{eventually, herald, http};
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal OTLP/HTTP collector: answers 200 to every POST and keeps the bodies.
async fn collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request at a time: headers, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    store
                        .lock()
                        .expect("lock")
                        .push(buf[head_end..head_end + len].to_vec());
                    buf.drain(..head_end + len);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, bodies)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test]
async fn api_publish_traces_continue_the_callers_trace() {
    let (addr, bodies) = collector().await;
    let endpoint = format!("http://{addr}");
    // Quiet logs must not switch tracing off.
    let gw = herald().start_env(
        &["--log", "warn"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = json!({"channel":"traced","event":"e","data":1}).to_string();
    let req = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         traceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http(gw.admin, req).await;
    assert_eq!(status, 200, "{text}");
    let id = hex(trace_id);
    let has = |b: &[u8], needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    eventually(
        "the collector receives both spans in the caller's trace",
        || async {
            let bodies = bodies.lock().expect("lock");
            let all: Vec<u8> = bodies.concat();
            has(&all, &id) && has(&all, b"api_publish") && has(&all, b"broker_publish")
        },
    )
    .await;
    // Every exported span of that request carries the caller's trace id.
    let bodies = bodies.lock().expect("lock");
    let with_publish = bodies
        .iter()
        .filter(|b| has(b, b"broker_publish"))
        .collect::<Vec<_>>();
    assert!(
        with_publish.iter().all(|b| has(b, &id)),
        "broker_publish joined the trace"
    );
    assert!(
        bodies.concat().windows(6).any(|w| w == b"herald"),
        "service name"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let gw = herald().start(&["--log-format", "json"]);
    let mut c = gw.connected().await;
    c.subscribe("x").await;
    eventually("some log lines", || async {
        gw.logs().lines().count() >= 2
    })
    .await;
    for line in gw.logs().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        gw.logs().contains("\"message\":\"herald listening\""),
        "{}",
        gw.logs()
    );
}
