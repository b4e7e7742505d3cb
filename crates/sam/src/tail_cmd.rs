//! `sam tail`: print the group's deliveries in order.

use std::io::Write;

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use sam_core::DeliverFrom;
use sam_node::config::ClusterConfig;
use sam_node::launch::member_spec;
use sam_node::node::{Event, Node};

/// How deliveries are printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// `seq mid payload`, one line each.
    Text,
    /// One JSON object per line: `seq`, `mid`, and `payload` (UTF-8) or `payload_b64`.
    Jsonl,
}

/// Where the printed deliveries start (one of the three; `--from-start` by default).
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub struct StartAt {
    /// From number 1 (or from the checkpoint the member catches up from when the log there
    /// is gone or it is far behind).
    #[arg(long)]
    from_start: bool,
    /// From the advertised checkpoint: its table is restored, the numbers after it printed.
    #[arg(long)]
    from_checkpoint: bool,
    /// Only what is committed after the tail joins.
    #[arg(long)]
    from_now: bool,
}

impl StartAt {
    fn deliver_from(&self) -> DeliverFrom {
        match (self.from_checkpoint, self.from_now) {
            (true, _) => DeliverFrom::Checkpoint,
            (_, true) => DeliverFrom::Now,
            _ => DeliverFrom::Start,
        }
    }
}

/// Join the group as a member and print every delivery in order.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sam tail --count 5                        # the first five deliveries, then exit\n  sam tail --from-now --format jsonl        # what commits from now on, one JSON object a line\n  sam tail --from-checkpoint                # the table restored from the checkpoint, then what follows"
)]
pub struct TailArgs {
    #[command(flatten)]
    config: crate::config_arg::ConfigArg,
    #[command(flatten)]
    start_at: StartAt,
    /// Stop after this many deliveries.
    #[arg(long)]
    count: Option<usize>,
    /// Stop when nothing was delivered for this many seconds (no cluster running, say); exits
    /// 1 if that leaves --count unreached. Without it, waits for ever.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// How to print deliveries.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Prints deliveries until `--count` or a signal.
pub fn execute(args: TailArgs) -> Result<std::process::ExitCode> {
    let config_path = args.config.path()?;
    let cluster = ClusterConfig::load(&config_path)?;
    let deliver_from = args.start_at.deliver_from();
    // A member that skips numbers cannot hold the table, so one starting now runs none.
    let mut spec = member_spec(&cluster, rand::random(), deliver_from != DeliverFrom::Now)?;
    spec.deliver_from = deliver_from;
    crate::runtime()?.block_on(async move {
        let mut node = Node::start(spec).await.context("starting a member")?;
        let mut out = std::io::stdout().lock();
        let mut printed = 0;
        let quiet = args.timeout.map(std::time::Duration::from_secs);
        let mut give_up = quiet.map(|q| tokio::time::Instant::now() + q);
        let mut timed_out = false;
        while args.count.is_none_or(|c| printed < c) {
            let event = tokio::select! {
                event = node.next_event() => event,
                () = crate::stop_signal() => break,
                () = tokio::time::sleep_until(give_up.unwrap_or_else(far_future)), if give_up.is_some() => {
                    timed_out = true;
                    break;
                }
            };
            match event {
                Some(Event::Deliver { seq, mid, payload }) => {
                    writeln!(out, "{}", line(args.format, seq.0, &mid.to_string(), &payload))?;
                    printed += 1;
                    give_up = quiet.map(|q| tokio::time::Instant::now() + q);
                }
                Some(Event::Restored { seq }) => eprintln!("caught up from the checkpoint at {seq}"),
                Some(_) => {}
                None => break,
            }
        }
        out.flush()?;
        drop(out);
        node.stop().await?;
        let short = args.count.filter(|c| printed < *c);
        match (timed_out, short) {
            (true, Some(count)) => {
                let secs = args.timeout.unwrap_or_default();
                eprintln!("nothing delivered for {secs} s (--timeout): {printed} of {count} printed");
                Ok(std::process::ExitCode::from(1))
            }
            _ => Ok(std::process::ExitCode::SUCCESS),
        }
    })
}

/// A deadline that never comes (the branch it guards is off anyway).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

fn line(format: Format, seq: u64, mid: &str, payload: &Bytes) -> String {
    match (format, std::str::from_utf8(payload)) {
        (Format::Text, Ok(text)) => format!("{seq} {mid} {text}"),
        (Format::Text, Err(_)) => format!("{seq} {mid} <{} bytes>", payload.len()),
        (Format::Jsonl, Ok(text)) => serde_json::json!({ "seq": seq, "mid": mid, "payload": text }).to_string(),
        (Format::Jsonl, Err(_)) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
            serde_json::json!({ "seq": seq, "mid": mid, "payload_b64": b64 }).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_carries_text_as_payload_and_bytes_as_base64() {
        assert_eq!(
            line(Format::Jsonl, 3, "1/a/2", &Bytes::from_static(b"hi")),
            r#"{"mid":"1/a/2","payload":"hi","seq":3}"#
        );
        let binary = line(Format::Jsonl, 4, "m", &Bytes::from_static(&[0xff, 0, 1]));
        assert_eq!(binary, r#"{"mid":"m","payload_b64":"/wAB","seq":4}"#);
    }
}
