//! Prometheus metrics of `pagemig tier`, served as text at `/metrics`.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use pagemig::tier::agent::IntervalReport;
use pagemig::tier::decide::Direction;
use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    promoted: IntCounter,
    demoted: IntCounter,
    decisions: IntCounterVec,
    pages: IntGaugeVec,
    gbps: Gauge,
    stall: Histogram,
    moving_cpu: Counter,
    tracking_cpu: Counter,
    kdamond_cpu: Gauge,
    fast_used: IntGauge,
    fast_limit: IntGauge,
    processes: IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    let metric = metric.expect("metric names and labels are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

impl Metrics {
    /// Every metric, at zero.
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        Metrics {
            promoted: register(
                &r,
                IntCounter::new(
                    "pagemig_tier_promoted_bytes_total",
                    "Bytes moved from the slow nodes to the fast ones",
                ),
            ),
            demoted: register(
                &r,
                IntCounter::new(
                    "pagemig_tier_demoted_bytes_total",
                    "Bytes moved from the fast nodes to the slow ones",
                ),
            ),
            decisions: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "pagemig_tier_decisions_total",
                        "Regions decided to move, by direction and reason",
                    ),
                    &["direction", "why"],
                ),
            ),
            pages: register(
                &r,
                gauge_vec(
                    "pagemig_tier_pages",
                    "Pages of each process's tiered memory on each node",
                    &["pid", "node"],
                ),
            ),
            gbps: register(
                &r,
                Gauge::new(
                    "pagemig_tier_migration_gigabytes_per_second",
                    "Bytes moved per second of moving in the last interval that moved any, in GB/s",
                ),
            ),
            stall: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pagemig_tier_stall_seconds",
                        "Longest kernel call of each move, what --max-stall bounds",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                    ]),
                ),
            ),
            moving_cpu: register(
                &r,
                Counter::new(
                    "pagemig_tier_moving_cpu_seconds_total",
                    "CPU time of the threads that moved pages",
                ),
            ),
            tracking_cpu: register(
                &r,
                Counter::new(
                    "pagemig_tier_tracking_cpu_seconds_total",
                    "CPU time of the agent spent sampling DAMON, reading placement and deciding",
                ),
            ),
            kdamond_cpu: register(
                &r,
                Gauge::new(
                    "pagemig_tier_kdamond_cpu_seconds",
                    "CPU time of the agent's DAMON kernel threads since the start",
                ),
            ),
            fast_used: register(
                &r,
                IntGauge::new(
                    "pagemig_tier_fast_bytes",
                    "Bytes of the tiered processes on the fast nodes",
                ),
            ),
            fast_limit: register(
                &r,
                IntGauge::new(
                    "pagemig_tier_fast_limit_bytes",
                    "The fast tier's limit: the budget, or the free memory above the margin",
                ),
            ),
            processes: register(
                &r,
                IntGauge::new("pagemig_tier_processes", "Processes being tiered"),
            ),
            registry: r,
        }
    }

    /// Folds one interval in.
    pub fn record(&self, report: &IntervalReport) {
        for d in &report.decisions {
            let why = serde_json::to_value(d.why).expect("a reason serialises");
            let direction = match d.direction {
                Direction::Promote => "promote",
                Direction::Demote => "demote",
            };
            self.decisions
                .with_label_values(&[direction, why.as_str().unwrap_or_default()])
                .inc();
        }
        let (mut bytes, mut secs) = (0u64, 0f64);
        for m in &report.moves {
            let r = &m.report;
            match m.direction {
                Direction::Promote => self.promoted.inc_by(r.bytes_moved),
                Direction::Demote => self.demoted.inc_by(r.bytes_moved),
            }
            if r.calls.calls > 0 {
                self.stall.observe(r.calls.longest.as_secs_f64());
            }
            self.moving_cpu.inc_by(r.calls.cpu_time.as_secs_f64());
            bytes += r.bytes_moved;
            secs += r.phases.moving.as_secs_f64();
        }
        if bytes > 0 && secs > 0.0 {
            self.gbps.set(bytes as f64 / secs / 1e9);
        }
        self.tracking_cpu.inc_by(report.tracking_cpu.as_secs_f64());
        self.kdamond_cpu.set(report.kdamond_cpu.as_secs_f64());
        self.fast_used.set(report.fast_used as i64);
        self.fast_limit
            .set(report.fast_limit.min(i64::MAX as u64) as i64);
        self.processes.set(report.processes as i64);
        for pid in &report.dropped {
            let pid = pid.to_string();
            // Series of an exited process go away with it.
            for p in report.placement.iter().filter(|p| p.pid.to_string() == pid) {
                for node in p.pages_per_node.keys() {
                    let _ = self.pages.remove_label_values(&[&pid, &node.to_string()]);
                }
            }
        }
        for p in &report.placement {
            for (node, pages) in &p.pages_per_node {
                self.pages
                    .with_label_values(&[&p.pid.to_string(), &node.to_string()])
                    .set(*pages as i64);
            }
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn text(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("metrics encode")
    }
}

/// An HTTP server answering `/metrics`; stopped on drop.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` and serves `metrics` from a thread.
    pub fn start(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<Server> {
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("--metrics {addr}: cannot listen there"))?,
        );
        let s = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in s.incoming_requests() {
                    let response = if request.url() == "/metrics" {
                        let header = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4"[..],
                        )
                        .expect("a valid header");
                        tiny_http::Response::from_string(metrics.text()).with_header(header)
                    } else {
                        tiny_http::Response::from_string("pagemig tier: metrics are at /metrics\n")
                            .with_status_code(404)
                    };
                    // A client that went away is its own business.
                    let _ = request.respond(response);
                }
            })
            .context("starting the metrics thread")?;
        Ok(Server {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
