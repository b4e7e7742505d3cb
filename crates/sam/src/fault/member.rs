//! A member process of a fault run (`sam fault member`): a sender or a tail on the real
//! network, writing what it does and sees as history records, one JSON line each, to its
//! standard output for the harness to collect.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use sam_core::{Digest, Mid};
use sam_node::config::ClusterConfig;
use sam_node::launch::member_spec;
use sam_node::node::{Event, Node};

use super::history::{hex, Fate, Record};
use super::now_us;

/// One member of a fault run (started by `sam fault run`).
#[derive(Args, Debug)]
pub struct MemberArgs {
    /// The cluster's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// This member's number in the run's history.
    #[arg(long)]
    member: usize,
    /// Send this many messages per second until a signal (a sender); 0: deliver only (a
    /// tail, which stops at the signal).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// How long a sender waits for the outcomes of its sends after the signal, in milliseconds.
    #[arg(long, default_value_t = 120_000)]
    settle_ms: u64,
}

/// Events taken from the node at once.
const EVENTS_PER_READ: usize = 1_024;
/// How often a sender hands the node a batch (its rate is spread over these).
const SEND_TICK: Duration = Duration::from_millis(10);

/// Runs the member until it is done (a sender) or stopped by a signal (a tail).
pub fn execute(args: MemberArgs) -> Result<std::process::ExitCode> {
    let cluster = ClusterConfig::load(&args.config)?;
    let mut spec = member_spec(&cluster, rand::random(), false)?;
    spec.deliveries = args.rate == 0;
    crate::runtime()?.block_on(async move {
        let mut node = Node::start(spec).await.context("starting a member")?;
        let mut out = Output { member: args.member, lines: std::io::BufWriter::new(std::io::stdout().lock()) };
        let result =
            if args.rate == 0 { tail(&mut node, &mut out).await } else { send(&mut node, &mut out, &args).await };
        out.flush();
        node.stop().await?;
        result.map(|()| std::process::ExitCode::SUCCESS)
    })
}

/// The member's records, written as JSON lines.
struct Output<W: Write> {
    member: usize,
    lines: W,
}

impl<W: Write> Output<W> {
    fn write(&mut self, record: &Record) {
        // A closed pipe means the harness is gone: nothing is left to tell.
        if let Ok(line) = serde_json::to_string(record) {
            let _ = writeln!(self.lines, "{line}");
        }
    }

    fn flush(&mut self) {
        let _ = self.lines.flush();
    }
}

/// Delivers until a signal, recording every delivery and every sequencer it hears of.
async fn tail(node: &mut Node, out: &mut Output<impl Write>) -> Result<()> {
    let member = out.member;
    let mut events = Vec::with_capacity(EVENTS_PER_READ);
    let mut watch = tokio::time::interval(Duration::from_millis(20));
    let mut following = None;
    let stop = crate::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = watch.tick() => {
                let Some(p) = node.progress().await? else { continue };
                let now = p.sequencer.map(|s| (p.epoch, s));
                if now.is_some() && now != following {
                    following = now;
                    if let Some((epoch, pid)) = now {
                        out.write(&Record::Sequencer { t: now_us(), member, epoch: epoch.0, pid: pid.0 });
                    }
                }
                out.flush();
            }
            n = node.next_events(&mut events, EVENTS_PER_READ) => {
                if n == 0 {
                    anyhow::bail!("the node stopped");
                }
                let t = now_us();
                for event in events.drain(..) {
                    match event {
                        Event::Deliver { seq, mid, payload } => {
                            let digest = hex(Digest::of(&payload));
                            out.write(&Record::Deliver { t, member, seq: seq.0, mid: mid.into(), digest });
                        }
                        Event::Restored { seq } => out.write(&Record::Restored { t, member, seq: seq.0 }),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Sends at the rate until a signal, then waits for every outcome (for `settle_ms` at most).
async fn send(node: &mut Node, out: &mut Output<impl Write>, args: &MemberArgs) -> Result<()> {
    let member = out.member;
    let per_tick = (f64::from(args.rate) * SEND_TICK.as_secs_f64()).ceil().max(1.0) as usize;
    let mut pending: HashSet<Mid> = HashSet::new();
    let mut counter = 0u64;
    let mut tick = tokio::time::interval(SEND_TICK);
    let mut events = Vec::with_capacity(EVENTS_PER_READ);
    let stop = crate::stop_signal();
    tokio::pin!(stop);
    let mut settle_until: Option<Instant> = None;
    while settle_until.is_none_or(|until| !pending.is_empty() && Instant::now() < until) {
        tokio::select! {
            () = &mut stop, if settle_until.is_none() => {
                settle_until = Some(Instant::now() + Duration::from_millis(args.settle_ms));
            }
            _ = tick.tick(), if settle_until.is_none() => {
                let payloads: Vec<Bytes> = (0..per_tick).map(|i| payload(member, counter + i as u64)).collect();
                counter += per_tick as u64;
                let mids = node.send_batch(payloads.iter().cloned()).await?;
                let t = now_us();
                for (mid, payload) in mids.iter().zip(&payloads) {
                    pending.insert(*mid);
                    out.write(&Record::Sent { t, member, mid: (*mid).into(), digest: hex(Digest::of(payload)) });
                }
            }
            n = node.next_events(&mut events, EVENTS_PER_READ) => {
                if n == 0 {
                    anyhow::bail!("the node stopped");
                }
                let t = now_us();
                for event in events.drain(..) {
                    let (mid, fate, seq) = match event {
                        Event::Committed { mid, seq } => (mid, Fate::Committed, Some(seq.0)),
                        Event::Expired { mid } => (mid, Fate::Expired, None),
                        Event::OutcomeUnknown { mid } => (mid, Fate::Unknown, None),
                        _ => continue,
                    };
                    pending.remove(&mid);
                    out.write(&Record::Outcome { t, member, mid: mid.into(), fate, seq });
                }
                out.flush();
            }
            // Looks at the clock again: the settling time may have run out.
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    out.write(&Record::Done { t: now_us(), member });
    Ok(())
}

/// A payload no other send of the run has: the member, the counter, and some padding.
fn payload(member: usize, counter: u64) -> Bytes {
    Bytes::from(format!("fault-run member {member} message {counter} {:-<40}", ""))
}
