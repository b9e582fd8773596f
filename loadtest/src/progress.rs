//! Live progress on stderr (indicatif) and the per-second series for the
//! report and plot, both sampled from the run's shared counters.

use crate::client::Run;
use crate::report::SeriesPoint;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(250);

pub struct Progress {
    bar: ProgressBar,
    run: Arc<Run>,
    /// Counters at the start of the measured phase.
    measuring: Arc<OnceLock<Sample>>,
    done: CancellationToken,
    task: JoinHandle<Vec<SeriesPoint>>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    delivered: u64,
    published: u64,
}

impl Progress {
    /// Starts sampling `run`; draws nothing when `quiet` or stderr is not a terminal.
    pub fn start(run: Arc<Run>, quiet: bool, clients: u64) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>3} {prefix:.bold} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let measuring = Arc::new(OnceLock::new());
        let done = CancellationToken::new();
        let task = tokio::spawn(sample(
            run.clone(),
            bar.clone(),
            measuring.clone(),
            done.clone(),
            clients,
        ));
        Self {
            bar,
            run,
            measuring,
            done,
            task,
        }
    }

    pub fn phase(&self, phase: &str) {
        self.bar.set_prefix(phase.to_owned());
    }

    /// The measured phase starts now: the series counts from here.
    pub fn begin_measuring(&self) {
        let _ = self.measuring.set(take(&self.run));
    }

    /// Stops sampling and clears the line; returns the series.
    pub async fn finish(self) -> Vec<SeriesPoint> {
        self.done.cancel();
        let series = self.task.await.unwrap_or_default();
        self.bar.finish_and_clear();
        series
    }
}

fn take(run: &Run) -> Sample {
    Sample {
        at: Instant::now(),
        delivered: run.delivered_total(),
        published: run.published.load(Ordering::Relaxed),
    }
}

async fn sample(
    run: Arc<Run>,
    bar: ProgressBar,
    measuring: Arc<OnceLock<Sample>>,
    done: CancellationToken,
    clients: u64,
) -> Vec<SeriesPoint> {
    let mut series = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    let mut last_second = take(&run);
    let mut p99 = 0u64;
    let mut rate = 0.0;
    let mut ticks = 0u64;
    let mut baselined = false;
    loop {
        let finishing = tokio::select! {
            () = done.cancelled() => true,
            _ = tick.tick() => false,
        };
        ticks += 1;
        let now = take(&run);
        let conns = run.connected.load(Ordering::Relaxed);
        let start = measuring.get().copied();
        if let Some(s0) = start
            && !baselined
        {
            // Seconds of the series start with the measured phase.
            baselined = true;
            ticks = 0;
            last_second = s0;
        }
        let t0 = start.map(|s| s.at);
        let window = now.at.duration_since(last_second.at).as_secs_f64();
        if (ticks > 0 && ticks % 4 == 0) || (finishing && window >= 0.25) {
            let secs = window.max(1e-3);
            rate = (now.delivered - last_second.delivered) as f64 / secs;
            p99 = run.sink.snapshot().quantile(0.99);
            if let Some(t0) = t0 {
                series.push(SeriesPoint {
                    t: now.at.duration_since(t0).as_secs_f64(),
                    delivered_per_second: rate,
                    published_per_second: (now.published - last_second.published) as f64 / secs,
                    connections: conns,
                });
            }
            last_second = now;
        }
        if finishing {
            break;
        }
        bar.set_message(format!(
            "conns {conns}/{clients} · published {} · {:.0} deliveries/s · p99 {:.2} ms",
            now.published,
            rate,
            p99 as f64 / 1000.0
        ));
        bar.tick();
    }
    series
}
