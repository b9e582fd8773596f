//! The examples in `docs/` run as written (with the port swapped for a test node's).

mod common;

use common::Gateway;
use std::path::Path;
use std::process::Command;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fenced blocks of `lang` in a Markdown document.
fn blocks<'a>(md: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = md;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("closed fence");
        out.push(&body[..end]);
        rest = &body[end + 3..];
    }
    out
}

#[tokio::test]
async fn api_curl_examples_succeed_against_a_node() {
    let gw = Gateway::start(&[]);
    let mut sub = gw.connected().await;
    sub.subscribe("reviews").await;
    let md = doc("api.md");
    let cmds: Vec<String> = blocks(&md, "sh")
        .into_iter()
        .flat_map(str::lines)
        .filter(|l| l.starts_with("curl "))
        .map(|l| l.replace("localhost:8080", &gw.public.to_string()))
        .collect();
    assert!(cmds.len() >= 4, "api.md should show curl examples");
    for cmd in &cmds {
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", cmd])
            .output()
            .expect("bash and curl are installed (scripts/test.sh installs curl)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.trim().is_empty(),
            "example failed: {cmd}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The publish examples on `reviews` really delivered.
    if cmds.iter().any(|c| c.contains("\"reviews\"")) {
        assert_eq!(sub.message().await["channel"], "reviews");
    }
}

#[test]
fn json_examples_in_the_docs_parse() {
    for name in ["protocol.md", "api.md"] {
        let md = doc(name);
        let found = blocks(&md, "json");
        assert!(!found.is_empty(), "{name} has JSON examples");
        for block in found {
            // A block holds one JSON value per line, or one multi-line value.
            let whole = serde_json::from_str::<serde_json::Value>(block);
            if whole.is_err() {
                for line in block.lines().filter(|l| !l.trim().is_empty()) {
                    let line = line.split("  //").next().unwrap_or(line);
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("{name}: invalid JSON example {line:?}: {e}"));
                }
            }
        }
    }
}

#[test]
fn example_config_in_the_docs_is_accepted() {
    let md = doc("configuration.md");
    let tomls = blocks(&md, "toml");
    assert!(!tomls.is_empty(), "configuration.md has a TOML example");
    for t in tomls {
        if let Err(e) = herald::config::Config::from_toml(t, Path::new("configuration.md")) {
            panic!("documented config is rejected: {e}\n{t}");
        }
    }
}
