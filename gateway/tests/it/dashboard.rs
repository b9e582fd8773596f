//! The Grafana dashboard (deploy/grafana/herald.json) and the alert rules
//! (deploy/prometheus/alerts.yml) only use metrics, and label values, that a
//! real node exports: renaming a metric without updating them fails here.

use crate::common::{Redis, eventually, herald, http_get};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PromQL of the dashboard: every `expr` of a panel target and every variable query.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dash, &mut out);
    out
}

/// PromQL of the rule file: `expr:` values, inline or as block scalars (`|`, `>`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let key = line.trim_start();
        let key = key.strip_prefix("- ").unwrap_or(key);
        let Some(rest) = key.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with(['|', '>']) {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .copied()
                .collect();
            out.push(block.join("\n"));
        } else {
            out.push(rest.to_owned());
        }
    }
    out
}

/// A metric used in a query, with its `label="value"` / `label!="value"` matchers
/// as (label, operator, value).
#[derive(Debug)]
struct Use {
    name: String,
    matchers: Vec<(String, String, String)>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Finds `herald_*` and `process_*` metric names and their equality matchers.
fn metric_uses(expr: &str) -> Vec<Use> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '"' {
            // Skip string literals.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        if !(name.starts_with("herald_") || name.starts_with("process_")) {
            continue;
        }
        let mut matchers = Vec::new();
        if chars.get(i) == Some(&'{') {
            let end = chars[i..].iter().position(|&c| c == '}').expect("}") + i;
            let body: String = chars[i + 1..end].iter().collect();
            for m in body.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let op_at = m.find(['=', '!']).expect("matcher operator");
                let (label, rest) = (m[..op_at].trim(), &m[op_at..]);
                let op = &rest[..rest.find('"').expect("quoted value")];
                let value = rest[op.len()..].trim_matches('"');
                // Target labels (job, instance), regexes and template variables are not ours.
                if ["=", "!="].contains(&op)
                    && !value.contains('$')
                    && !["job", "instance"].contains(&label)
                {
                    matchers.push((label.to_owned(), op.to_owned(), value.to_owned()));
                }
            }
            i = end + 1;
        }
        out.push(Use { name, matchers });
    }
    out
}

/// `# TYPE` lines, and every sample's labels, of a Prometheus text exposition.
struct Exposition {
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<(String, String)>>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, ty) = t.split_once(' ').expect("TYPE line");
            types.insert(name.to_owned(), ty.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.rsplit_once(' ').expect("sample").0;
            let (name, lbls) = series.split_once('{').unwrap_or((series, "}"));
            let set = labels.entry(name.to_owned()).or_default();
            for pair in lbls
                .trim_end_matches('}')
                .split("\",")
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair.split_once('=').expect("label");
                set.insert((k.to_owned(), v.trim_matches('"').to_owned()));
            }
        }
    }
    Exposition { types, labels }
}

impl Exposition {
    /// The exported family a used name belongs to: itself, or the histogram
    /// of a `_bucket` / `_sum` / `_count` series.
    fn family<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.types.contains_key(name) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.types.get(base)? == "histogram").then_some(base)
        })
    }

    /// Whether some sample of `family` carries `label="value"`.
    fn has_label(&self, family: &str, label: &str, value: &str) -> bool {
        let want = (label.to_owned(), value.to_owned());
        [family.to_owned(), format!("{family}_bucket")]
            .iter()
            .any(|s| self.labels.get(s).is_some_and(|set| set.contains(&want)))
    }
}

#[test]
fn extraction_finds_names_matchers_and_histogram_series() {
    let uses = metric_uses(
        r#"sum by (reason) (rate(herald_messages_dropped_total{job=~"$job",reason="slow_consumer"}[5m]))
          / histogram_quantile(0.99, rate(herald_broker_lag_seconds_bucket{result!="ok"}[5m]))
          and on (job) process_open_fds > 0 and foo_total{x="herald_not_a_metric"}"#,
    );
    let got: Vec<String> = uses
        .iter()
        .map(|u| {
            let m = u.matchers.iter().map(|(k, op, v)| format!("{k}{op}{v}"));
            format!("{} {}", u.name, m.collect::<Vec<_>>().join(","))
        })
        .collect();
    assert_eq!(
        got,
        [
            "herald_messages_dropped_total reason=slow_consumer",
            "herald_broker_lag_seconds_bucket result!=ok",
            "process_open_fds ",
        ]
    );
    let exprs = rule_exprs("  - expr: up == 0\n    expr: |\n      a\n      b\n    for: 1m\n");
    assert_eq!(exprs, ["up == 0", "      a\n      b"]);
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let dash: Value =
        serde_json::from_str(&repo_file("deploy/grafana/herald.json")).expect("dashboard JSON");
    let alerts = repo_file("deploy/prometheus/alerts.yml");

    // Every panel queries through the datasource variable.
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "no datasource variable"
    );
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ds, "panel {}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"], ds, "panel {}", p["title"]);
        }
    }
    for alert in [
        "HeraldBrokerDown",
        "HeraldDeliveryDrops",
        "HeraldSlowConsumerSpike",
        "HeraldRecoveryFailures",
        "HeraldNearConnectionLimit",
        "HeraldHighBrokerLag",
    ] {
        assert!(
            alerts.contains(&format!("- alert: {alert}\n")),
            "{alert} missing"
        );
    }

    let mut uses: BTreeMap<&str, Vec<Use>> = BTreeMap::new();
    uses.insert(
        "deploy/grafana/herald.json",
        dashboard_queries(&dash)
            .iter()
            .flat_map(|q| metric_uses(q))
            .collect(),
    );
    uses.insert(
        "deploy/prometheus/alerts.yml",
        rule_exprs(&alerts)
            .iter()
            .flat_map(|q| metric_uses(q))
            .collect(),
    );
    assert!(uses["deploy/grafana/herald.json"].len() >= 50, "{uses:?}");
    assert!(uses["deploy/prometheus/alerts.yml"].len() >= 10, "{uses:?}");

    // A Redis-backed node with a little traffic: a subscriber, an API publish
    // and a client emit, so broker lag, fan-out and queue histograms have samples.
    let redis = Redis::start();
    let gw = herald().start(&["--redis-url", &redis.url()]);
    eventually("node ready", || async { gw.ready().await == 200 }).await;
    let mut c = gw.connected().await;
    c.subscribe("dashboard").await;
    let (status, body) = gw.publish("dashboard", "api", json!({"n": 1})).await;
    assert_eq!(status, 200, "{body}");
    let r = c
        .request(json!({"op":"emit","channel":"dashboard","event":"ws","data":{"n":2}}))
        .await;
    assert_eq!(r["op"], "emitted", "{r}");
    for _ in 0..2 {
        c.message().await;
    }
    eventually("broker lag observed", || async {
        gw.metric("herald_broker_lag_seconds_count").await >= 2.0
    })
    .await;
    let (status, text) = http_get(gw.admin, "/metrics").await;
    assert_eq!(status, 200);
    let exp = parse_exposition(&text);

    let mut problems = BTreeSet::new();
    let mut checked: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (file, uses) in &uses {
        for u in uses {
            let Some(family) = exp.family(&u.name) else {
                problems.insert(format!("{file}: {} is not exported", u.name));
                continue;
            };
            let mut shown = format!("{family} ({})", exp.types[family]);
            for (label, op, value) in &u.matchers {
                if !exp.has_label(family, label, value) {
                    problems.insert(format!("{file}: {family} has no {label}=\"{value}\""));
                }
                shown.push_str(&format!(" {label}{op}\"{value}\""));
            }
            checked.entry(file).or_default().insert(shown);
        }
    }
    for (file, names) in &checked {
        println!("{file}: {} metric uses checked", names.len());
        for n in names {
            println!("  {n}");
        }
    }
    let problems: Vec<String> = problems.into_iter().collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
