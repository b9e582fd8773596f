//! `herald-load`: load-test tool for Herald and the Socket.IO peer.
//!
//! Scenarios (`fanout`, `idle`, `channels`, `churn`, `flood`, `abuse`,
//! `jitter`) live in [`delivery`], [`idle`], [`flood`], [`abuse`] and
//! [`jitter`]; they drive many [`client`] tasks and the [`publish`]ers, account
//! deliveries with [`stats`], and return a [`report::Report`] that `main`
//! prints, writes as JSON and draws with [`plot`]. Everything a test needs is
//! public so a scenario can run in-process against a real node.

pub mod abuse;
pub mod cli;
pub mod client;
pub mod delivery;
pub mod flood;
pub mod floor;
pub mod idle;
pub mod jitter;
pub mod net;
pub mod plot;
pub mod progress;
pub mod publish;
pub mod report;
pub mod scan;
pub mod sio;
pub mod sse;
pub mod stats;
pub mod sys;

use anyhow::Context;
use cli::{Command, Common};
use report::Report;

/// Runs one scenario to its report (not the hidden worker mode).
pub async fn run(cmd: Command) -> anyhow::Result<Report> {
    match cmd {
        Command::Fanout(a) => delivery::fanout(a).await,
        Command::Channels(a) => delivery::channels(a).await,
        Command::Churn(a) => delivery::churn(a).await,
        Command::Idle(a) => idle::idle(a).await,
        Command::Flood(a) => flood::flood(a).await,
        // Its own report type; this is the attacked phase only.
        Command::Abuse(a) => abuse::abuse(a).await.map(|r| r.summary()),
        Command::Jitter(a) => jitter::jitter(a).await,
        Command::Floor(_) => anyhow::bail!("the floor is a server, not a scenario"),
    }
}

/// Writes `--json` and `--plot` files.
pub fn write_outputs(report: &Report, common: &Common) -> anyhow::Result<()> {
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &common.plot {
        std::fs::write(path, plot::svg(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// How a scenario command ends: its output files written (or why not) and
/// its problems reported, then the runtime let go without waiting for
/// connections that are still closing. Non-zero exit on anything wrong.
pub fn conclude(
    rt: tokio::runtime::Runtime,
    written: anyhow::Result<()>,
    problems: &[String],
) -> std::process::ExitCode {
    let mut ok = true;
    if let Err(e) = written {
        eprintln!("error: {e:#}");
        ok = false;
    }
    for p in problems {
        eprintln!("error: {p}");
        ok = false;
    }
    rt.shutdown_background();
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
