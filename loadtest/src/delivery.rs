//! The delivery scenarios: `fanout`, `channels` and `churn`.
//!
//! All three run the same phases: connect and subscribe every counted client
//! (bounded concurrency), open the publishers, publish on schedule (with
//! churning clients coming and going for `churn`), wait a grace period for
//! stragglers, stop, and close the books per client and channel against the
//! positions the publishers were given.

use crate::cli::{ChannelsArgs, ChurnArgs, Common, DeliveryArgs, FanoutArgs, PublishVia, Target};
use crate::client::{Channels, ClientPlan, Hold, Run, Setup, run_client};
use crate::net::{self, Endpoint};
use crate::progress::Progress;
use crate::publish::{PublishOutcome, PublishPlan, Publishers};
use crate::report::{ChurnReport, ClientsReport, DeliveryReport, Report};
use crate::stats::{Latency, SeqCounts};
use crate::sys::CpuMeter;
use anyhow::{Context, bail, ensure};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How subscribers map to channels.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Every client subscribes to `bench-0..channels`.
    Fanout { channels: u32 },
    /// Client i subscribes to `user-i` only.
    OnePerClient,
}

struct Spec {
    scenario: &'static str,
    common: Common,
    delivery: DeliveryArgs,
    clients: usize,
    layout: Layout,
    churn: Option<(f64, Duration)>,
    params: serde_json::Value,
}

pub async fn fanout(a: FanoutArgs) -> anyhow::Result<Report> {
    let channels = u32::try_from(a.channels).context("--channels is too large")?;
    run(Spec {
        scenario: "fanout",
        params: json!({"clients": a.clients, "channels": a.channels}),
        common: a.common,
        delivery: a.delivery,
        clients: a.clients,
        layout: Layout::Fanout { channels },
        churn: None,
    })
    .await
}

pub async fn channels(a: ChannelsArgs) -> anyhow::Result<Report> {
    run(Spec {
        scenario: "channels",
        params: json!({"channels": a.channels}),
        common: a.common,
        delivery: a.delivery,
        clients: a.channels,
        layout: Layout::OnePerClient,
        churn: None,
    })
    .await
}

pub async fn churn(a: ChurnArgs) -> anyhow::Result<Report> {
    ensure!(a.churn_rate > 0.0, "--churn-rate must be positive");
    run(Spec {
        scenario: "churn",
        params: json!({
            "clients": a.clients,
            "churn_rate": a.churn_rate,
            "churn_hold_ms": a.churn_hold_ms,
        }),
        common: a.common,
        delivery: a.delivery,
        clients: a.clients,
        layout: Layout::Fanout { channels: 1 },
        churn: Some((a.churn_rate, Duration::from_millis(a.churn_hold_ms))),
    })
    .await
}

/// Clients' set-up results, as they report them.
pub struct SetupTally {
    /// Set-up time of those that succeeded.
    pub latency: Latency,
    pub failed: u64,
    pub first_error: Option<String>,
}

impl SetupTally {
    /// Reads until every sender is gone.
    pub async fn collect(rx: &mut mpsc::UnboundedReceiver<Setup>) -> Self {
        let mut t = Self {
            latency: Latency::new(),
            failed: 0,
            first_error: None,
        };
        while let Some(s) = rx.recv().await {
            match s.result {
                Ok(d) => t.latency.record_duration(d),
                Err(e) => {
                    t.failed += 1;
                    t.first_error.get_or_insert(e);
                }
            }
        }
        t
    }

    /// Fails when any of `clients` could not set up.
    pub fn check(&self, clients: usize) -> anyhow::Result<()> {
        if self.failed > 0 {
            bail!(
                "{} of {clients} clients could not connect and subscribe; first error: {}",
                self.failed,
                self.first_error.as_deref().unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// Stops the clients and the progress line, then fails with `e`.
pub async fn abort<T>(run: &Run, progress: Progress, e: anyhow::Error) -> anyhow::Result<T> {
    run.stop.cancel();
    progress.finish().await;
    Err(e)
}

/// Waits until `expected` deliveries arrived or `grace` is over.
pub async fn drain(run: &Run, expected: u64, grace: Duration) {
    let end = Instant::now() + grace;
    while run.delivered_total() < expected && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resolves every `--url`.
pub async fn endpoints(urls: &[String]) -> anyhow::Result<Vec<Arc<Endpoint>>> {
    ensure!(!urls.is_empty(), "give at least one --url");
    let mut eps = Vec::with_capacity(urls.len());
    for u in urls {
        eps.push(Arc::new(Endpoint::resolve(u).await?));
    }
    Ok(eps)
}

pub fn target_name(t: Target) -> &'static str {
    match t {
        Target::Herald => "Herald node",
        Target::Socketio => "Socket.IO node",
        Target::HeraldSocketio => "Herald node (Socket.IO endpoint)",
        Target::HeraldSse => "Herald node (SSE endpoint)",
    }
}

/// Moves the CPU verdict into problems or warnings.
pub fn judge_cpu(report: &mut Report, allow: bool) {
    if let Some(cpu) = &report.cpu
        && cpu.client_bound
    {
        let msg = format!(
            "the load client itself was CPU-bound ({:.0}% of {} cores); results understate the server",
            cpu.percent_of_cores, cpu.cores
        );
        if allow {
            report.warnings.push(msg);
        } else {
            report.problems.push(msg);
        }
    }
}

fn prefix(layout: Layout) -> Arc<str> {
    match layout {
        Layout::Fanout { .. } => Arc::from("bench-"),
        Layout::OnePerClient => Arc::from("user-"),
    }
}

fn channels_of(layout: Layout, client: usize) -> Channels {
    match layout {
        Layout::Fanout { channels } => Channels {
            prefix: prefix(layout),
            first: 0,
            count: channels,
        },
        Layout::OnePerClient => Channels {
            prefix: prefix(layout),
            first: u32::try_from(client).unwrap_or(u32::MAX),
            count: 1,
        },
    }
}

fn validate(s: &Spec) -> anyhow::Result<()> {
    let d = &s.delivery;
    ensure!(s.clients > 0, "need at least one client");
    ensure!(
        d.rate > 0.0 && d.rate.is_finite(),
        "--rate must be positive"
    );
    ensure!(
        d.duration > 0.0 && d.duration.is_finite(),
        "--duration must be positive"
    );
    ensure!(
        d.grace >= 0.0 && d.grace.is_finite(),
        "--grace must be >= 0"
    );
    match (s.common.target, s.layout) {
        (Target::Socketio, Layout::OnePerClient) => bail!(
            "the channels scenario needs --target herald: the Socket.IO peer puts every socket in one room"
        ),
        (Target::Socketio, Layout::Fanout { channels }) if channels != 1 => {
            bail!("the Socket.IO peer has a single room: use --channels 1")
        }
        (Target::HeraldSocketio, Layout::OnePerClient) => bail!(
            "the channels scenario needs --target herald: its clients subscribe with the Herald protocol"
        ),
        (Target::HeraldSocketio, Layout::Fanout { channels }) if channels != 1 => {
            bail!("--target herald-socketio joins one namespace (channel): use --channels 1")
        }
        (_, Layout::Fanout { channels: 0 }) => bail!("--channels must be at least 1"),
        _ => {}
    }
    check_room(
        s.clients,
        s.common.target,
        d.publish_via,
        d.redis_url.as_deref(),
    )
}

/// Room for `clients` sockets, and a Redis URL when publishing into Redis.
pub fn check_room(
    clients: usize,
    target: Target,
    via: PublishVia,
    redis_url: Option<&str>,
) -> anyhow::Result<()> {
    let fds = crate::sys::nofile_limit().saturating_sub(256);
    ensure!(
        clients as u64 <= fds,
        "{clients} clients need as many open files, but this process may open {fds} \
         (soft limit raised to the hard limit); use `idle` for more connections"
    );
    if target.server() == Target::Herald && via == PublishVia::Redis && redis_url.is_none() {
        bail!("--publish-via redis needs --redis-url (the Redis of the Herald cluster)");
    }
    Ok(())
}

async fn run(spec: Spec) -> anyhow::Result<Report> {
    validate(&spec)?;
    let common = &spec.common;
    let d = &spec.delivery;
    let target = common.target;
    let eps = endpoints(&common.urls).await?;
    let eps_plain: Vec<Endpoint> = eps.iter().map(|e| (**e).clone()).collect();
    net::preflight(&eps_plain, target_name(target)).await?;

    let clients = spec.clients;
    let run = Run::new(clients);
    let progress = Progress::start(run.clone(), common.quiet, clients as u64);
    progress.phase("connecting");

    // 1. Subscribers.
    let gate = Arc::new(Semaphore::new(d.connect_concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<Setup>();
    let setup_start = Instant::now();
    let mut handles = Vec::with_capacity(clients);
    for i in 0..clients {
        let plan = ClientPlan {
            index: i,
            ep: eps[i % eps.len()].clone(),
            source: None,
            target,
            channels: channels_of(spec.layout, i),
            slot: Some(i),
            measure: true,
            hold: Hold::UntilStop,
        };
        handles.push(tokio::spawn(run_client(
            plan,
            run.clone(),
            Some(gate.clone()),
            tx.clone(),
        )));
    }
    drop(tx);
    let setups = SetupTally::collect(&mut rx).await;
    let setup_seconds = setup_start.elapsed().as_secs_f64();
    if let Err(e) = setups.check(clients) {
        return abort(&run, progress, e).await;
    }
    let connect_latency = setups.latency;

    // 2. Publishers, then the measured phase.
    let via = match target.server() {
        Target::Herald => d.publish_via,
        _ => PublishVia::Client,
    };
    let (publish_channels, random) = match spec.layout {
        Layout::Fanout { channels } => (channels, false),
        Layout::OnePerClient => (u32::try_from(clients).unwrap_or(u32::MAX), true),
    };
    let plan = PublishPlan {
        target,
        via,
        rate: d.rate,
        duration: Duration::from_secs_f64(d.duration),
        prefix: prefix(spec.layout),
        channels: publish_channels,
        random,
        pad: d.payload,
        connections: d.publishers,
        redis_url: d.redis_url.clone(),
    };
    let publishers = match Publishers::connect(plan, &eps[0]).await {
        Ok(p) => p,
        Err(e) => return abort(&run, progress, e.context("setting up the publishers")).await,
    };
    progress.phase("publishing");
    let cpu = CpuMeter::start();
    progress.begin_measuring();
    let measure_start = Instant::now();
    let churn_stop = CancellationToken::new();
    let churn_task = spec.churn.map(|(rate, hold)| {
        tokio::spawn(churn_driver(
            rate,
            hold,
            eps.clone(),
            target,
            channels_of(spec.layout, 0),
            run.clone(),
            churn_stop.clone(),
            clients,
        ))
    });
    let published = publishers.run(run.clone()).await;
    churn_stop.cancel();

    // 3. Grace: until everything expected arrived or time is up.
    progress.phase("grace");
    let per_message = match spec.layout {
        Layout::Fanout { .. } => clients as u64,
        Layout::OnePerClient => 1,
    };
    let expected = published.published * per_message;
    drain(&run, expected, Duration::from_secs_f64(d.grace)).await;
    let churn = match churn_task {
        Some(t) => Some(t.await.context("churn driver")?),
        None => None,
    };
    let measured = measure_start.elapsed().as_secs_f64();
    let cpu = cpu.finish(0.0);
    run.stop.cancel();
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        outcomes.push(h.await.context("client task")?);
    }
    let series = progress.finish().await;
    let latency = run.sink.snapshot();

    // 4. Books.
    let mut delivery = close_books(&outcomes, &published, spec.layout, target);
    published.fill(&mut delivery);
    delivery.subscribers_per_message = per_message;
    delivery.expected = expected;
    delivery.deliveries_per_second = delivery.delivered as f64 / measured.max(1e-9);
    delivery.latency = latency.summary();
    delivery.latency_curve = latency.curve();

    let mut report = Report {
        scenario: spec.scenario.to_owned(),
        target: target.name().to_owned(),
        urls: common.urls.clone(),
        params: spec.params,
        clients: ClientsReport::all_set_up(clients, setup_seconds, &connect_latency),
        cpu: Some(cpu),
        series,
        churn,
        ..Report::default()
    };
    if let serde_json::Value::Object(m) = &mut report.params {
        m.insert("rate".into(), json!(d.rate));
        m.insert("duration".into(), json!(d.duration));
        m.insert("payload".into(), json!(d.payload));
        m.insert("publish_via".into(), json!(via));
        m.insert("publishers".into(), json!(d.publishers));
        m.insert("grace".into(), json!(d.grace));
    }
    if delivery.publish_seconds > d.duration * 1.1 {
        report.warnings.push(format!(
            "publishing fell behind: {:.0}/s achieved of {}/s asked (slow answers; try more --publishers)",
            delivery.publish_rate, d.rate
        ));
    }
    problems(&mut report, &delivery);
    report.delivery = Some(delivery);
    judge_cpu(&mut report, common.allow_client_bound);
    Ok(report)
}

fn problems(report: &mut Report, d: &DeliveryReport) {
    publish_problems(report, d);
    if d.lost > 0 || d.duplicated > 0 || d.out_of_order > 0 {
        report.problems.push(format!(
            "delivery check failed: {} lost, {} duplicated, {} out of order",
            d.lost, d.duplicated, d.out_of_order
        ));
    }
    if d.clients_dropped > 0 {
        report.problems.push(format!(
            "{} subscriber connections ended early; first: {}",
            d.clients_dropped,
            d.first_drop_reason.as_deref().unwrap_or("?")
        ));
    }
}

/// Nothing published, or publications that failed.
pub fn publish_problems(report: &mut Report, d: &DeliveryReport) {
    if d.published == 0 {
        report.problems.push("nothing was published".to_owned());
    }
    if d.publish_failed > 0 {
        report.problems.push(format!(
            "{} publications failed; first error: {}",
            d.publish_failed,
            d.publish_first_error.as_deref().unwrap_or("?")
        ));
    }
}

/// Totals per client against what was published.
fn close_books(
    outcomes: &[crate::client::ClientOutcome],
    published: &PublishOutcome,
    layout: Layout,
    target: Target,
) -> DeliveryReport {
    let mut d = DeliveryReport::default();
    for o in outcomes {
        let chans = channels_of(layout, o.index);
        let mut c = SeqCounts::default();
        for (j, t) in o.trackers.iter().enumerate() {
            let Some(t) = t else { continue };
            let end = match target {
                // Socket.IO clients count the publisher's sequence numbers.
                Target::Socketio | Target::HeraldSocketio => published.published,
                Target::Herald | Target::HeraldSse => {
                    let ch = chans.first as usize + j;
                    match published.last_offset.get(ch) {
                        Some(&last) if last > 0 => last + 1,
                        _ => 0,
                    }
                }
            };
            c.add(&t.finish(end));
        }
        d.add_client(o.index, c, o.ended.as_ref());
    }
    d
}

/// Starts churning clients at `rate` per second until `stop`, then waits for them.
#[allow(clippy::too_many_arguments)]
async fn churn_driver(
    rate: f64,
    hold: Duration,
    eps: Vec<Arc<Endpoint>>,
    target: Target,
    channels: Channels,
    run: Arc<Run>,
    stop: CancellationToken,
    first_index: usize,
) -> ChurnReport {
    let (tx, mut rx) = mpsc::unbounded_channel::<Setup>();
    let start = tokio::time::Instant::now();
    let mut handles: Vec<JoinHandle<crate::client::ClientOutcome>> = Vec::new();
    let mut i = 0u64;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(due) => {}
        }
        let index = first_index + i as usize;
        let plan = ClientPlan {
            index,
            ep: eps[index % eps.len()].clone(),
            source: None,
            target,
            channels: channels.clone(),
            slot: None,
            measure: false,
            hold: Hold::For(hold),
        };
        handles.push(tokio::spawn(run_client(
            plan,
            run.clone(),
            None,
            tx.clone(),
        )));
        i += 1;
    }
    drop(tx);
    let setups = SetupTally::collect(&mut rx).await;
    let mut report = ChurnReport {
        started: i,
        failed: setups.failed,
        first_error: setups.first_error,
        ..ChurnReport::default()
    };
    let lat = setups.latency;
    for h in handles {
        match h.await {
            // Set-up failures were counted above.
            Ok(o) if !o.set_up => {}
            Ok(o) => match o.ended {
                None => report.completed += 1,
                Some(e) => {
                    report.failed += 1;
                    report.first_error.get_or_insert(e);
                }
            },
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert(e.to_string());
            }
        }
    }
    report.connect_subscribe = lat.summary();
    report
}
