//! `sam`: the command line of SAM, Scalable Atomic Multicast.

mod bench_cmd;
mod bench_plot;
mod config_arg;
mod config_cmd;
mod fault;
mod keygen_cmd;
mod local_cmd;
mod model_cmd;
mod send_cmd;
mod server_cmd;
mod sim_cmd;
mod status_cmd;
mod table_cmd;
mod tail_cmd;

use std::io::IsTerminal;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// SAM: an open group in which every member delivers every message in one agreed total order.
#[derive(Parser, Debug)]
#[command(name = "sam", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The least severe log lines written to stderr: off, error, warn, info, debug or trace
    /// (`RUST_LOG`, when set, says it per module instead).
    #[arg(long, global = true, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
    /// How log lines are written: text for people, json (one object a line) for collectors.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// A line of text each, colored on a terminal.
    Text,
    /// A JSON object each.
    Json,
}

/// Logs go to stderr (stdout carries results), filtered by `RUST_LOG` or else `level`.
fn init_logs(level: LevelFilter, format: LogFormat) {
    let filter = EnvFilter::builder().with_default_directive(level.into()).from_env_lossy();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the deterministic simulator: a whole group under seeded faults, with every promise checked.
    Sim(Box<sim_cmd::SimArgs>),
    /// Model-check sequencer failover exhaustively (3 commit servers, k_commit = 2, 2 mids,
    /// 3 numbers, 3 ballots, a lossy network, one storage loss) and print the states explored.
    Model(model_cmd::ModelArgs),
    /// A whole cluster on this host's loopback, as separate processes.
    #[command(subcommand)]
    Local(local_cmd::LocalCommand),
    /// Run one server process of a cluster.
    Server(server_cmd::ServerArgs),
    /// Send messages to the group and print where each was committed.
    Send(send_cmd::SendArgs),
    /// Print the group's deliveries in order.
    Tail(tail_cmd::TailArgs),
    /// Read or write the replicated key-value table.
    Table(table_cmd::TableArgs),
    /// Where the group stands, and each server's reachability and lag.
    Status(status_cmd::StatusArgs),
    /// Write a cluster's key files, member credentials, and rotate keys.
    Keygen(keygen_cmd::KeygenArgs),
    /// Write a cluster's configuration for real hosts.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Measure throughput and latency: one publisher, many members, real processes and disks.
    Bench(bench_cmd::BenchArgs),
    /// Fault tests of the real program: a cluster of processes under kills, pauses,
    /// partitions, loss and duplication, its history checked against every promise.
    #[command(subcommand)]
    Fault(fault::FaultCommand),
    /// Print a completion script for a shell (for example `sam completions bash >
    /// /etc/bash_completion.d/sam`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Whether it prints results someone may pipe into another program; a cluster it runs
    /// (servers, `local up`, fault runs) must instead outlive its reader, and stop its
    /// processes itself.
    fn prints_for_a_pipe(&self) -> bool {
        !matches!(self, Command::Server(_) | Command::Local(_) | Command::Fault(_))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_level, cli.log_format);
    if cli.command.prints_for_a_pipe() {
        // A reader that stopped reading (`sam tail | head`) ends this process quietly, as it
        // ends any Unix filter, rather than making each print panic or fail.
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Sim(args) => sim_cmd::execute(*args),
        Command::Model(args) => model_cmd::execute(args),
        Command::Local(command) => local_cmd::execute(command),
        Command::Server(args) => server_cmd::execute(args),
        Command::Send(args) => send_cmd::execute(args),
        Command::Tail(args) => tail_cmd::execute(args),
        Command::Table(args) => table_cmd::execute(args),
        Command::Status(args) => status_cmd::execute(args),
        Command::Keygen(args) => keygen_cmd::execute(args),
        Command::Config(command) => config_cmd::execute(command),
        Command::Bench(args) => bench_cmd::execute(args),
        Command::Fault(command) => fault::execute(command),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sam", &mut std::io::stdout());
            Ok(std::process::ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", said_once(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: an error that already names its cause (as the
/// library errors do, `... {path}: {source}`) is not followed by that cause again.
fn said_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The runtime of the commands that run nodes beside an application (clients, the benchmark's
/// many members): two worker threads. A server runs on one (see `server_cmd`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
