//! The examples in `docs/` run as written (with the port swapped for a test node's).

use crate::common::herald;
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
    let gw = herald().start(&[]);
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

/// Runs the `herald` binary with nothing of the caller's environment.
fn run_herald(args: &[&str]) -> String {
    let out = herald().command().args(args).output().expect("run herald");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn the_flags_table_is_the_one_the_declarations_generate() {
    let md = doc("configuration.md");
    let start = md.find("| Flag | Environment |").expect("flags table");
    let end = md[start..]
        .find("<!-- end of generated table -->")
        .expect("end marker")
        + start;
    assert_eq!(
        &md[start..end],
        run_herald(&["config", "reference"]),
        "docs/configuration.md's flags table drifted: paste `herald config reference` over it"
    );
}

/// Every `$ herald config …` command, and every `$ herald serve …` shown
/// failing, in `console` blocks prints exactly the lines that follow it.
#[test]
fn documented_commands_print_what_the_docs_show() {
    let mut ran = 0;
    for page in ["configuration.md", "security.md"] {
        let md = doc(page);
        for block in blocks(&md, "console") {
            let mut lines = block.lines().peekable();
            while let Some(line) = lines.next() {
                let Some(cmd) = line.strip_prefix("$ herald ") else {
                    continue;
                };
                let mut want = Vec::new();
                while let Some(l) = lines.next_if(|l| !l.starts_with("$ ")) {
                    want.push(l);
                }
                let refusal = want.first().is_some_and(|l| l.starts_with("Error:"));
                if !(cmd.starts_with("config ") || cmd.starts_with("serve ") && refusal) {
                    continue;
                }
                let args: Vec<&str> = cmd.split_whitespace().collect();
                assert_eq!(
                    run_herald(&args).trim_end(),
                    want.join("\n"),
                    "{page}: `herald {cmd}`"
                );
                ran += 1;
            }
        }
    }
    assert!(ran >= 14, "only {ran} documented commands found");
}

#[tokio::test]
async fn sse_curl_examples_stream_and_resume() {
    let gw = herald().start(&[]);
    let md = doc("sse.md");
    // Whole commands: continuation lines joined.
    let cmds: Vec<String> = blocks(&md, "sh")
        .into_iter()
        .flat_map(|b| {
            b.replace("\\\n", " ")
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.starts_with("curl "))
        .map(|l| l.replace("localhost:8080", &gw.public.to_string()))
        .collect();
    let [stream, publish, resume] = cmds.as_slice() else {
        panic!("sse.md shows a stream, a publish and a resume: {cmds:?}");
    };
    let run = |cmd: String| {
        std::thread::spawn(move || {
            let out = Command::new("bash")
                .args(["-c", &cmd])
                .output()
                .expect("bash and curl are installed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let streaming = run(stream.clone());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let published = run(publish.clone()).join().expect("publish");
    assert!(published.contains("\"offset\":1"), "{published}");
    let text = streaming.join().expect("stream");
    assert!(
        text.contains("event: review_added\ndata: {\"stars\":5}\nid: reviews="),
        "{text}"
    );
    // The resume example, with this node's epochs for the doc's made-up ones.
    let first_id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id");
    let doc_id = resume
        .split("Last-Event-ID: ")
        .nth(1)
        .expect("a Last-Event-ID")
        .trim_end_matches('\'');
    let resumed = run(resume.replace(doc_id, first_id))
        .join()
        .expect("resume");
    assert!(
        resumed.contains("event: review_added\ndata: {\"stars\":5}")
            && !resumed.contains("unrecovered"),
        "the resume replays the publication: {resumed}"
    );
}
