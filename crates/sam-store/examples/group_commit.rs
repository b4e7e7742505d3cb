//! Measures group commit: appends N records of B bytes, flushing after every K, and reports
//! records per second, fsyncs run, how many records one fsync covered, and how long a flushed
//! record waited to become durable.
//!
//! ```text
//! cargo build --release -p sam-store --examples
//! target/release/examples/group_commit [--records N] [--size B] [--flush-every K]
//!     [--durability fsync|os] [--no-preallocate] [--wait] [--dir PATH]
//! ```
//!
//! `--wait` blocks after each flush until it is durable (one fsync per flush, no pipelining): the
//! baseline group commit is compared with. Without `--dir` the log goes to a temporary directory
//! (on the file system of `$TMPDIR`).

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sam_store::{Durability, Log, LogOptions, OnDurable, Position};

struct Settings {
    records: u64,
    size_bytes: usize,
    flush_every: u64,
    durability: Durability,
    preallocate: bool,
    wait: bool,
    dir: Option<String>,
}

fn parse_settings() -> Result<Settings, Box<dyn Error>> {
    let mut settings = Settings {
        records: 200_000,
        size_bytes: 100,
        flush_every: 1,
        durability: Durability::Fsync,
        preallocate: true,
        wait: false,
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => settings.records = value()?.parse()?,
            "--size" => settings.size_bytes = value()?.parse()?,
            "--flush-every" => settings.flush_every = value()?.parse::<u64>()?.max(1),
            "--durability" => settings.durability = value()?.parse()?,
            "--dir" => settings.dir = Some(value()?),
            "--no-preallocate" => settings.preallocate = false,
            "--wait" => settings.wait = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(settings)
}

/// When each durable position was reported.
type Reports = Arc<Mutex<Vec<(Position, Instant)>>>;

fn main() -> Result<(), Box<dyn Error>> {
    let settings = parse_settings()?;
    let temporary = tempfile::tempdir()?;
    let dir = settings.dir.clone().map_or_else(|| temporary.path().to_path_buf(), Into::into);
    let reports: Reports = Arc::default();
    let sink = Arc::clone(&reports);
    let on_durable: OnDurable =
        Arc::new(move |position| sink.lock().expect("no panic").push((position, Instant::now())));
    let options = LogOptions {
        durability: settings.durability,
        preallocate: settings.preallocate,
        on_durable: Some(on_durable),
        ..LogOptions::default()
    };
    let (mut log, _) = Log::open(&dir, options)?;
    let record = vec![0xA5u8; settings.size_bytes];
    let mut flushes = Vec::new();
    let started = Instant::now();
    for index in 1..=settings.records {
        log.append(&record)?;
        if index % settings.flush_every == 0 || index == settings.records {
            log.flush()?;
            flushes.push((log.end(), Instant::now()));
            if settings.wait {
                log.watch().wait_for(log.end(), None)?;
            }
        }
    }
    let durable = log.sync()?;
    let elapsed = started.elapsed();
    let fsyncs = log.fsyncs();
    drop(log);
    let reports = reports.lock().expect("no panic").clone();
    print_report(&settings, durable, elapsed, fsyncs, &flush_latencies(&flushes, &reports));
    let reopened = Instant::now();
    let options = LogOptions { durability: settings.durability, ..LogOptions::default() };
    let (_, recovered) = Log::open(&dir, options)?;
    println!("reopen            {:?} for {} records", reopened.elapsed(), recovered.records.len());
    Ok(())
}

/// How long each flush waited for the first durable report covering it, sorted.
fn flush_latencies(flushes: &[(Position, Instant)], reports: &[(Position, Instant)]) -> Vec<Duration> {
    let mut report = reports.iter().peekable();
    let mut latencies = Vec::with_capacity(flushes.len());
    for &(end, flushed) in flushes {
        while report.peek().is_some_and(|(durable, _)| *durable < end) {
            report.next();
        }
        if let Some((_, reported)) = report.peek() {
            latencies.push(reported.saturating_duration_since(flushed));
        }
    }
    latencies.sort();
    latencies
}

fn print_report(settings: &Settings, durable: Position, elapsed: Duration, fsyncs: u64, latencies: &[Duration]) {
    let records = durable.0 as f64;
    let seconds = elapsed.as_secs_f64();
    let percentile = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
    println!(
        "durability={} preallocate={} wait={} records={} size={}B flush_every={}",
        settings.durability, settings.preallocate, settings.wait, durable.0, settings.size_bytes, settings.flush_every
    );
    println!("elapsed           {seconds:.3} s");
    println!("records/s         {:.0}", records / seconds);
    println!("MB/s (bodies)     {:.1}", records * settings.size_bytes as f64 / seconds / 1e6);
    println!("fsyncs            {fsyncs} ({:.0}/s)", fsyncs as f64 / seconds);
    println!("records per fsync {:.1}", records / fsyncs.max(1) as f64);
    println!(
        "flush->durable    p50 {:?}  p99 {:?}  max {:?}",
        percentile(0.5),
        percentile(0.99),
        latencies.last().copied().unwrap_or_default()
    );
}
