//! `sam send`: send messages to the group and print where each was committed.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use sam_core::Mid;
use sam_node::config::ClusterConfig;
use sam_node::launch::member_spec;
use sam_node::node::{Event, Node};

/// Send messages to the group: the arguments, or stdin's lines when there are none, or
/// `--count` generated ones. Prints `seq mid` for each committed message; exits non-zero if
/// any expired or no cluster answered in time.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sam send hello world                      # two messages; prints 'seq mid' for each\n  seq 1 1000 | sam send                     # one message per stdin line\n  sam send --count 10000 --size 64          # generated messages\n  sam send --config /etc/sam/sam.toml hi    # another cluster (or SAM_CONFIG=...)"
)]
pub struct SendArgs {
    #[command(flatten)]
    config: crate::config_arg::ConfigArg,
    /// Send this many generated messages instead.
    #[arg(long)]
    count: Option<usize>,
    /// The size in bytes of each generated message.
    #[arg(long, default_value_t = 64, requires = "count")]
    size: usize,
    /// Give up when nothing is committed for this many seconds (no cluster running, say).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// The messages to send.
    messages: Vec<String>,
}

/// Sends and waits for every outcome.
pub fn execute(args: SendArgs) -> Result<std::process::ExitCode> {
    let config_path = args.config.path()?;
    let cluster = ClusterConfig::load(&config_path)?;
    let payloads = payloads(&args)?;
    let mut spec = member_spec(&cluster, rand::random(), false)?;
    spec.deliveries = false;
    crate::runtime()?.block_on(async move {
        let mut node = Node::start(spec).await.context("starting a member")?;
        let sent = send_all(&mut node, payloads, Duration::from_secs(args.timeout)).await?;
        node.stop().await?;
        sent.report_interruption();
        if sent.interrupted.is_none() && sent.expired > 0 {
            eprintln!("{} of {} messages expired", sent.expired, sent.committed + sent.expired);
        }
        Ok(std::process::ExitCode::from(sent.exit_code()))
    })
}

fn payloads(args: &SendArgs) -> Result<Vec<Bytes>> {
    if let Some(count) = args.count {
        return Ok((0..count).map(|i| generated(i, args.size)).collect());
    }
    if !args.messages.is_empty() {
        return Ok(args.messages.iter().map(|m| Bytes::from(m.clone())).collect());
    }
    let lines = std::io::stdin().lock().lines().collect::<Result<Vec<String>, _>>().context("reading stdin")?;
    Ok(lines.into_iter().map(Bytes::from).collect())
}

/// A message of `size` bytes that says which one it is.
fn generated(i: usize, size: usize) -> Bytes {
    let mut text = format!("message {i} ").into_bytes();
    text.resize(size.max(text.len()), b'.');
    text.truncate(size.max(1));
    Bytes::from(text)
}

/// What became of a run of sends.
#[derive(Debug, Default)]
pub struct Sent {
    /// Messages committed (each printed).
    pub committed: usize,
    /// Messages that expired, or whose fate lay in numbers skipped by a catch-up.
    pub expired: usize,
    /// When Ctrl-C (or SIGTERM) stopped the wait: the messages sent and not known to be
    /// committed (they may still be), and how many were never sent.
    pub interrupted: Option<(Vec<Mid>, usize)>,
}

impl Sent {
    /// The exit code: 130 when interrupted, as shells report Ctrl-C; 1 when some expired.
    pub fn exit_code(&self) -> u8 {
        match (&self.interrupted, self.expired) {
            (Some(_), _) => 130,
            (None, 0) => 0,
            (None, _) => 1,
        }
    }

    /// This run, stopped with `pending` sent and undecided and `unsent` never sent.
    fn stopped(mut self, pending: std::collections::HashSet<Mid>, unsent: usize) -> Sent {
        self.interrupted = Some((pending.into_iter().collect(), unsent));
        self
    }

    /// Says on stderr what an interruption left undecided.
    pub fn report_interruption(&self) {
        let Some((unknown, unsent)) = &self.interrupted else { return };
        eprintln!(
            "interrupted: {} committed (printed), {} expired, {} sent and not known to be committed (they may still be), {unsent} not sent",
            self.committed,
            self.expired,
            unknown.len()
        );
        for mid in unknown {
            eprintln!("unknown {mid}");
        }
    }
}

/// Sends every payload, printing each commit, until every fate is known or a stop signal.
pub async fn send_all(node: &mut Node, payloads: Vec<Bytes>, quiet: Duration) -> Result<Sent> {
    let total = payloads.len();
    let mut pending = std::collections::HashSet::<Mid>::new();
    let mut sent = Sent::default();
    let mut payloads = payloads.into_iter();
    let mut stop = std::pin::pin!(crate::stop_signal());
    while sent.committed + sent.expired < total {
        // Keep one window's worth queued: the node holds the rest back itself.
        let batch: Vec<Bytes> = payloads.by_ref().take(1_024usize.saturating_sub(pending.len())).collect();
        let unsent = batch.len();
        if unsent > 0 {
            tokio::select! {
                () = &mut stop => return Ok(sent.stopped(pending, unsent + payloads.len())),
                mids = node.send_batch(batch) => pending.extend(mids?),
            }
            continue;
        }
        let event = tokio::select! {
            () = &mut stop => return Ok(sent.stopped(pending, payloads.len())),
            event = tokio::time::timeout(quiet, node.next_event()) => event,
        };
        let Ok(event) = event else {
            bail!(
                "nothing was committed for {} s: is the cluster running? ({} of {total} committed)",
                quiet.as_secs(),
                sent.committed
            );
        };
        match event {
            Some(Event::Committed { mid, seq }) if pending.remove(&mid) => {
                sent.committed += 1;
                println!("{seq} {mid}");
            }
            Some(Event::Expired { mid } | Event::OutcomeUnknown { mid }) if pending.remove(&mid) => {
                sent.expired += 1;
                eprintln!("expired {mid}");
            }
            Some(_) => {}
            None => bail!("the member stopped"),
        }
    }
    Ok(sent)
}
