//! Metrics: what a node shows Prometheus (the node layer of DESIGN section 8).
//!
//! Each number is kept where it changes, in atomics, by whoever changes it: the network
//! driver's counters ([`NetStats`]), the log's fsync times (its sync thread), the loop's turn
//! sizes, and the protocol's positions, which the node copies out of its process at most every
//! [`POSITIONS_EVERY`] (the core belongs to the node's task: a scrape never reads it, and the
//! loop never waits on a scrape). [`NodeMetrics::encode`] writes them in Prometheus's text
//! format with `prometheus-client`; [`MetricsServer`] answers `GET /metrics` on a thread of
//! its own.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use sam_core::message::Kind;
use sam_core::{Alarms, Process, Roles};
use sam_net::NetStats;
use thiserror::Error;

/// How often the node copies the protocol's positions for a scrape to read: at each look at
/// its alarms.
pub const POSITIONS_EVERY: Duration = crate::alarms::ALARM_CHECK;

/// Each alarm's label value.
const ALARM_LABELS: [(Alarms, &str); 4] = [
    (Alarms::STORAGE_FULL, "storage_full"),
    (Alarms::REPLAY_TABLE_FULL, "replay_table_full"),
    (Alarms::DUPLICATE_PID, "duplicate_pid"),
    (Alarms::DERIVATIONS_THROTTLED, "derivations_throttled"),
];

/// The protocol's positions and the log's size, as the node last copied them.
#[derive(Debug, Default)]
struct Positions {
    epoch: AtomicU64,
    committed: AtomicU64,
    delivered: AtomicU64,
    checkpoint: AtomicU64,
    sequencer: AtomicU64,
    alarms: AtomicU64,
    log_records: AtomicU64,
    log_segments: AtomicU64,
    events_held: AtomicU64,
}

/// How long the log's fsyncs take: its sync thread observes them from the moment the log
/// opens, before the rest of the metrics exist.
#[derive(Clone, Debug)]
pub(crate) struct FsyncTimes(Histogram);

impl FsyncTimes {
    pub(crate) fn new() -> FsyncTimes {
        // 50 µs to about 1.6 s: an fsync of this machine's disk takes 0.2 to 0.5 ms.
        FsyncTimes(Histogram::new(exponential_buckets(0.000_05, 2.0, 16)))
    }

    /// Notes how long an fsync took.
    pub(crate) fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }
}

/// A node's metrics: its loop updates them, anyone may encode them.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    registry: Arc<Registry>,
    positions: Arc<Positions>,
    turn_inputs: Histogram,
}

/// What a scrape reads besides the registered histograms.
#[derive(Debug)]
struct Sources {
    net: Arc<NetStats>,
    positions: Arc<Positions>,
    roles: Roles,
}

impl NodeMetrics {
    /// The metrics of a node with `roles` whose driver counts into `net` and whose log's
    /// fsyncs are timed in `fsyncs`.
    pub(crate) fn new(net: Arc<NetStats>, roles: Roles, fsyncs: FsyncTimes) -> NodeMetrics {
        let positions = Arc::new(Positions::default());
        let turn_inputs = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let mut registry = Registry::default();
        registry.register_with_unit("sam_fsync", "How long each fsync of the log took", Unit::Seconds, fsyncs.0);
        registry.register(
            "sam_turn_inputs",
            "Datagrams the node loop handled in one turn before it wrote and sent what they caused",
            turn_inputs.clone(),
        );
        registry.register_collector(Box::new(Sources { net, positions: positions.clone(), roles }));
        NodeMetrics { registry: Arc::new(registry), positions, turn_inputs }
    }

    /// Notes how many datagrams one turn of the loop handled.
    pub(crate) fn observe_turn(&self, inputs: usize) {
        self.turn_inputs.observe(inputs as f64);
    }

    /// Copies the process's positions, the log's size and the application's backlog.
    pub(crate) fn copy_positions(&self, process: &Process, log: Option<&sam_store::Log>, events_held: usize) {
        let p = &self.positions;
        let set = |gauge: &AtomicU64, value: u64| gauge.store(value, Ordering::Relaxed);
        let client = process.client();
        let commit = process.commit_server();
        let sequencer = process.sequencer();
        let epoch = sequencer.map(|s| s.epoch()).or(commit.map(|c| c.promised())).or(client.map(|c| c.epoch()));
        set(&p.epoch, epoch.map_or(0, |e| e.0));
        let committed = sequencer.map(|s| s.committed()).or(commit.map(|c| c.committed()));
        set(&p.committed, committed.or(client.map(|c| c.known_committed())).map_or(0, |s| s.0));
        set(&p.delivered, client.map_or(0, |c| c.delivered().0));
        let checkpoint = process.checkpoint_server().and_then(|c| c.latest()).map(|c| c.info().seq);
        set(&p.checkpoint, checkpoint.or(client.and_then(|c| c.checkpoint()).map(|c| c.seq)).map_or(0, |s| s.0));
        set(&p.sequencer, u64::from(sequencer.is_some()));
        set(&p.alarms, u64::from(process.alarms().bits()));
        set(&p.log_records, log.map_or(0, |l| l.end().0.saturating_sub(l.start().0)));
        set(&p.log_segments, log.map_or(0, |l| l.segments() as u64));
        set(&p.events_held, events_held as u64);
    }

    /// Every metric in Prometheus's text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String fails only if an encoder does, and ours never do.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Writes one unlabelled counter.
fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes one unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let g = ConstGauge::new(value as i64);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes a counter with one label, one sample per `(label value, count)`.
fn labelled_counter<'v>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'v str, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, count) in values {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The kind's name as a label value.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Data => "data",
        Kind::Order => "order",
        Kind::Assign => "assign",
        Kind::Accepted => "accepted",
        Kind::Rejected => "rejected",
        Kind::Commit => "commit",
        Kind::Heartbeat => "heartbeat",
        Kind::QueryEntries => "query_entries",
        Kind::Entries => "entries",
        Kind::Fetch => "fetch",
        Kind::FetchBlocks => "fetch_blocks",
        Kind::Block => "block",
        Kind::Prepare => "prepare",
        Kind::Promise => "promise",
        Kind::PreVote => "pre_vote",
        Kind::PreVoteGranted => "pre_vote_granted",
        Kind::CheckpointReport => "checkpoint_report",
        Kind::Forgotten => "forgotten",
        Kind::Dropped => "dropped",
        Kind::Ping => "ping",
        Kind::Pong => "pong",
    }
}

impl Sources {
    fn traffic(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let n = &self.net;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            encoder,
            "sam_datagrams_received",
            "Datagrams received that opened and decoded",
            read(&n.datagrams_in),
        )?;
        counter(encoder, "sam_datagrams_sent", "Datagrams sent", read(&n.datagrams_out))?;
        counter(encoder, "sam_bytes_received", "Bytes of every datagram read", read(&n.bytes_in))?;
        counter(encoder, "sam_bytes_sent", "Bytes of the datagrams sent", read(&n.bytes_out))?;
        counter(encoder, "sam_send_calls", "System calls that sent datagrams", read(&n.send_calls))?;
        counter(encoder, "sam_relayed", "Frames relayed to registered members (unicast mode)", read(&n.relayed))?;
        counter(encoder, "sam_challenges", "Cookie challenges sent to requests", read(&n.challenges))?;
        let by_kind = |counts: &[AtomicU64]| -> Vec<(&'static str, u64)> {
            Kind::ALL.iter().map(|k| (kind_name(*k), read(&counts[k.index()]))).collect()
        };
        labelled_counter(
            encoder,
            "sam_messages_received",
            "Messages handed to the protocol, by kind",
            "kind",
            by_kind(&n.messages_in),
        )?;
        labelled_counter(
            encoder,
            "sam_messages_sent",
            "Messages queued to send, by kind",
            "kind",
            by_kind(&n.messages_out),
        )
    }

    fn drops(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let reasons = self.net.drops();
        labelled_counter(encoder, "sam_dropped", "Datagrams or messages dropped, by why", "reason", reasons)
    }

    fn positions(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let p = &self.positions;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (committed, delivered) = (read(&p.committed), read(&p.delivered));
        gauge(encoder, "sam_epoch", "The highest epoch this process knows of, as one number: its round times 65536 plus the candidate's rank (sam status prints round.rank)", read(&p.epoch))?;
        gauge(encoder, "sam_committed_seq", "The highest number this process knows committed", committed)?;
        if self.roles.client.is_some() {
            gauge(encoder, "sam_delivered_seq", "Every number up to this one is delivered", delivered)?;
            gauge(encoder, "sam_lag", "Numbers committed and not delivered here", committed.saturating_sub(delivered))?;
        }
        gauge(encoder, "sam_checkpoint_seq", "The latest checkpoint this process holds or heard", read(&p.checkpoint))?;
        gauge(encoder, "sam_sequencer", "1 while this process is the sequencer", read(&p.sequencer))?;
        gauge(
            encoder,
            "sam_log_records",
            "Records in the log (written, not yet retired by compaction)",
            read(&p.log_records),
        )?;
        gauge(encoder, "sam_log_segments", "Segment files of the log", read(&p.log_segments))?;
        gauge(encoder, "sam_events_held", "Events the application has not taken yet", read(&p.events_held))?;
        gauge(encoder, "sam_relay_members", "Members registered for relaying here", read(&self.net.relay_members))?;
        let alarms = read(&p.alarms);
        let mut family = encoder.encode_descriptor(
            "sam_alarm",
            "1 while an alarm is raised",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (alarm, name) in ALARM_LABELS {
            let labels = [("alarm", name)];
            let raised = u64::from(alarm.bits()) & alarms != 0;
            ConstGauge::new(i64::from(raised)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.traffic(&mut encoder)?;
        self.drops(&mut encoder)?;
        self.positions(&mut encoder)?;
        process(&mut encoder)
    }
}

/// The process's CPU time, memory and open files, under the names Prometheus's client
/// libraries give them, read from `/proc/self` at each scrape (nothing where there is none).
fn process(encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Ok(()) };
    // Fields after the command name (which may hold spaces) start at its closing parenthesis:
    // utime and stime are the 14th and 15th fields, rss the 24th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf reads constants of the system.
    let (ticks_per_s, page) =
        unsafe { (nix::libc::sysconf(nix::libc::_SC_CLK_TCK), nix::libc::sysconf(nix::libc::_SC_PAGESIZE)) };
    let cpu = ConstCounter::new((field(11) + field(12)) as f64 / ticks_per_s.max(1) as f64);
    cpu.encode(encoder.encode_descriptor(
        "process_cpu_seconds",
        "User and system CPU time spent",
        None,
        cpu.metric_type(),
    )?)?;
    let rss = field(21).saturating_mul(page.max(0) as u64);
    gauge(encoder, "process_resident_memory_bytes", "Resident memory size in bytes", rss)?;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    gauge(encoder, "process_open_fds", "Open file descriptors", fds)
}

/// Why the metrics endpoint could not start.
#[derive(Debug, Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What went wrong.
    pub reason: String,
}

/// An HTTP endpoint that answers `GET /metrics` with a node's metrics, on a thread of its
/// own; it stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any free one) and serves `metrics`.
    pub fn start(addr: SocketAddr, metrics: NodeMetrics) -> Result<MetricsServer, MetricsError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MetricsError { addr, reason: e.to_string() })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("sam-metrics".into())
            .spawn(move || serve(&serving, &metrics))
            .map_err(|e| MetricsError { addr, reason: e.to_string() })?;
        Ok(MetricsServer { server, thread: Some(thread), addr: bound })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers requests until the server is unblocked.
fn serve(server: &tiny_http::Server, metrics: &NodeMetrics) {
    for request in server.incoming_requests() {
        let found = *request.method() == tiny_http::Method::Get && request.url().split('?').next() == Some("/metrics");
        // A client that hung up is not the server's problem.
        let _ = if found {
            let content_type = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE.as_bytes(),
            )
            .expect("a valid header");
            request.respond(tiny_http::Response::from_string(metrics.encode()).with_header(content_type))
        } else {
            let mut body = String::new();
            let _ = writeln!(body, "not found: metrics are at /metrics");
            request.respond(tiny_http::Response::from_string(body).with_status_code(404))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_come_out_in_the_text_format() {
        let net = Arc::new(NetStats::default());
        net.datagrams_in.store(7, Ordering::Relaxed);
        net.messages_in[Kind::Commit.index()].store(3, Ordering::Relaxed);
        net.replayed.store(2, Ordering::Relaxed);
        let fsyncs = FsyncTimes::new();
        let metrics =
            NodeMetrics::new(net, Roles { client: Some(sam_core::Incarnation(1)), ..Roles::default() }, fsyncs.clone());
        fsyncs.observe(Duration::from_micros(300));
        metrics.observe_turn(5);
        metrics.positions.committed.store(10, Ordering::Relaxed);
        metrics.positions.delivered.store(4, Ordering::Relaxed);
        metrics.positions.alarms.store(u64::from(Alarms::STORAGE_FULL.bits()), Ordering::Relaxed);
        let text = metrics.encode();
        let rss = text.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes "));
        assert!(rss.and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v > 1 << 20), "{text}");
        for line in [
            "# TYPE sam_datagrams_received_total counter",
            "sam_datagrams_received_total 7",
            "sam_messages_received_total{kind=\"commit\"} 3",
            "sam_dropped_total{reason=\"replayed\"} 2",
            "sam_lag 6",
            "sam_alarm{alarm=\"storage_full\"} 1",
            "sam_alarm{alarm=\"duplicate_pid\"} 0",
            "# TYPE sam_fsync_seconds histogram",
            "sam_fsync_seconds_count 1",
            "sam_turn_inputs_bucket{le=\"8\"} 1",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_server_answers_metrics_and_nothing_else() {
        let metrics = NodeMetrics::new(Arc::new(NetStats::default()), Roles::default(), FsyncTimes::new());
        let server = MetricsServer::start("127.0.0.1:0".parse().expect("address"), metrics).expect("start");
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
            write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("request");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("answer");
            answer
        };
        let answer = get("/metrics");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
        assert!(answer.contains("sam_epoch 0"), "{answer}");
        assert!(!answer.contains("sam_lag"), "a node without a member has no lag");
        assert!(get("/").starts_with("HTTP/1.0 404"));
    }
}
