//! `sam keygen`: a cluster's key files, member credentials and key rotation (DESIGN section 12,
//! "Keys").
//!
//! Every file is written private (0600, in a 0700 directory when the command makes it) and
//! synced; a new file never overwrites one, and a rewrite during rotation goes through a
//! temporary file renamed over the old, so that a crash leaves the old keys or the new ones.
//! Rotation follows the design's steps: add the new key accept-only, install it everywhere,
//! promote it to sealing, retire the old one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use sam_net::security::keys::{member_pid, ClusterId, Key, KeyKind, Keyring, Secret, Suite};
use sam_net::security::signing;
use sam_node::credential::{self, CHECKPOINT_FILE, SERVER_FILE};

/// What to write: a new cluster's keys by default, or a member credential, or a rotation step.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The directory of the cluster's key files (made with mode 0700 when missing).
    #[arg(long)]
    dir: PathBuf,
    /// A new cluster's AEAD: aes-256-gcm (the default; fastest with AES instructions) or
    /// chacha20-poly1305 (for CPUs without them).
    #[arg(long, value_enum, conflicts_with_all = ["member", "rotate", "promote", "retire"])]
    suite: Option<SuiteArg>,
    /// A new cluster's id, 16 hex digits; drawn from the OS RNG when not given.
    #[arg(long, value_name = "HEX", conflicts_with_all = ["member", "rotate", "promote", "retire"])]
    cluster_id: Option<String>,
    /// Write DIR/member-NAME.key, the member credential NAME (1 to 64 of A-Z a-z 0-9 . _ -),
    /// derived from DIR/server.key.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["rotate", "promote", "retire"])]
    member: Option<String>,
    /// With --member: rewrite an existing credential (after a rotation of the group key or
    /// member master).
    #[arg(long, requires = "member")]
    replace: bool,
    /// Rotation, step 1: add a new key of KIND to DIR/server.key, accept-only (it opens frames
    /// but seals none), and rewrite DIR/checkpoint.key.
    #[arg(long, value_enum, value_name = "KIND", conflicts_with_all = ["promote", "retire"])]
    rotate: Option<KindArg>,
    /// Rotation, step 2: make key ID of KIND the one that seals (the others of KIND become
    /// accept-only), once every process holds it.
    #[arg(long, num_args = 2, value_names = ["KIND", "ID"], conflicts_with = "retire")]
    promote: Option<Vec<String>>,
    /// Rotation, step 3: remove the accept-only key ID of KIND (never the sealing key).
    #[arg(long, num_args = 2, value_names = ["KIND", "ID"])]
    retire: Option<Vec<String>>,
    /// Print the `signing_keys` line of the configuration: the public keys heartbeats are
    /// signed under with `sign_server_frames = true`, one per server key in DIR/server.key
    /// (after a server key rotation, run it again and install the line everywhere).
    #[arg(long, conflicts_with_all = ["member", "rotate", "promote", "retire", "suite", "cluster_id"])]
    signing_keys: bool,
}

/// The AEAD of a new cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SuiteArg {
    /// AES-256-GCM.
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    #[value(name = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl SuiteArg {
    fn suite(self) -> Suite {
        match self {
            SuiteArg::Aes256Gcm => Suite::Aes256Gcm,
            SuiteArg::ChaCha20Poly1305 => Suite::ChaCha20Poly1305,
        }
    }
}

/// The kinds of key that rotate; the checkpoint and member keys are derived from the server key
/// and member master, and follow them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// The servers' own key (and so the checkpoint key).
    Server,
    /// The group key: everything multicast or relayed to the group.
    Group,
    /// The member master (and so every member credential's key).
    MemberMaster,
}

impl KindArg {
    fn kind(self) -> KeyKind {
        match self {
            KindArg::Server => KeyKind::Server,
            KindArg::Group => KeyKind::Group,
            KindArg::MemberMaster => KeyKind::MemberMaster,
        }
    }

    /// Whether member credentials hold keys of (or derived from) this kind.
    fn in_member_credentials(self) -> bool {
        matches!(self, KindArg::Group | KindArg::MemberMaster)
    }
}

/// Runs `sam keygen`.
pub fn execute(args: KeygenArgs) -> Result<std::process::ExitCode> {
    if let Some(name) = &args.member {
        member(&args.dir, name, args.replace)?;
    } else if args.signing_keys {
        println!("{}", signing_keys_line(&load_server(&absolute(&args.dir)?)?));
    } else if let Some(kind) = args.rotate {
        rotate(&args.dir, kind)?;
    } else if let Some(words) = &args.promote {
        let (kind, id) = kind_and_id(words, "--promote")?;
        promote(&args.dir, kind, id)?;
    } else if let Some(words) = &args.retire {
        let (kind, id) = kind_and_id(words, "--retire")?;
        retire(&args.dir, kind, id)?;
    } else {
        new_cluster(&args)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The KIND and ID of `--promote` or `--retire`.
fn kind_and_id(words: &[String], flag: &str) -> Result<(KindArg, u16)> {
    let [kind, id] = words else { bail!("{flag} takes KIND and ID") };
    let kind = KindArg::from_str(kind, false)
        .map_err(|_| anyhow::anyhow!("{flag}: unknown kind {kind:?} (server, group or member-master)"))?;
    let id = id.parse().map_err(|_| anyhow::anyhow!("{flag}: {id:?} is not a key id (0 to 65535)"))?;
    Ok((kind, id))
}

fn new_cluster(args: &KeygenArgs) -> Result<()> {
    let cluster = match &args.cluster_id {
        Some(text) => credential::parse_cluster_id(text)
            .with_context(|| format!("--cluster-id: {text:?} is not 16 hex digits (such as 0123456789abcdef)"))?,
        None => ClusterId::generate().context("drawing a cluster id")?,
    };
    let suite = args.suite.unwrap_or(SuiteArg::Aes256Gcm).suite();
    let dir = absolute(&args.dir)?;
    warn_if_shared(&dir);
    credential::write_cluster_keys(&dir, cluster, suite)?;
    let server = dir.join(SERVER_FILE);
    let checkpoint = dir.join(CHECKPOINT_FILE);
    println!("cluster id {cluster}, suite {}", suite.name());
    println!("wrote {}: the servers' keys (keep it on the servers' hosts only)", server.display());
    println!("wrote {}: for servers that hold only the checkpoint role", checkpoint.display());
    println!("member credentials: sam keygen --dir {} --member NAME", dir.display());
    println!();
    println!("Put these lines in the cluster's configuration (cluster_id among the top-level keys):");
    println!();
    println!("cluster_id = \"{cluster}\"");
    println!();
    println!("[security]");
    println!("mode = \"encrypt\"");
    println!("server_key = {}", toml_path(&server)?);
    println!("checkpoint_key = {}", toml_path(&checkpoint)?);
    println!("# on members' hosts: member_key = {}", toml_path(&dir.join(credential::member_file("NAME")))?);
    println!("# signed frames (members deliver only what the sequencer's signed heartbeats vouch for):");
    println!("# sign_server_frames = true");
    println!("# {}", signing_keys_line(&credential::load(&server)?));
    Ok(())
}

/// The configuration line that lists the heartbeat signing keys of `server`'s server keys.
fn signing_keys_line(server: &Keyring) -> String {
    let keys: Vec<String> =
        server.of_kind(KeyKind::Server).map(|k| format!("\"{}\"", signing::public_key(k, server.cluster))).collect();
    format!("signing_keys = [{}]", keys.join(", "))
}

fn member(dir: &Path, name: &str, replace: bool) -> Result<()> {
    if !credential::is_member_name(name) {
        bail!("--member: {name:?} is not a member name (1 to {} of A-Z a-z 0-9 . _ -)", credential::MEMBER_NAME_MAX);
    }
    let dir = absolute(dir)?;
    let server = load_server(&dir)?;
    let path = dir.join(credential::member_file(name));
    let ring = Keyring::member_from(&server, name);
    if replace {
        credential::replace(&ring, &path, Some(name))?;
    } else {
        credential::save(&ring, &path, Some(name)).map_err(|e| match e {
            credential::CredentialError::Exists { .. } => {
                anyhow::Error::new(e).context("after a rotation, rewrite a credential with --replace")
            }
            e => e.into(),
        })?;
    }
    let pid = member_pid(name);
    println!("wrote {}: the member credential {name:?}", path.display());
    let last = pid.0 | ((1 << sam_core::Pid::INSTANCE_BITS) - 1);
    println!("pid {} ({:#018x}); its processes use pids {}..={last}", pid.0, pid.0, pid.0);
    println!("on the member's host: member_key = {}", toml_path(&path)?);
    Ok(())
}

fn rotate(dir: &Path, kind: KindArg) -> Result<()> {
    let dir = absolute(dir)?;
    let mut server = load_server(&dir)?;
    let highest = server.of_kind(kind.kind()).map(|k| k.id).max().unwrap_or(0);
    let Some(id) = highest.checked_add(1) else {
        bail!("{} key ids are used up to {highest}; retire keys before rotating", kind.kind().name())
    };
    let secret = Secret::generate().context("drawing a key")?;
    server.keys.push(Key { kind: kind.kind(), id, secret, accept_only: true });
    rewrite(&dir, &server)?;
    let name = kind.kind().name();
    println!("added {name} key {id}, accept-only");
    print_rewrote(&dir);
    print_kind(&server, kind);
    println!("next:");
    println!("  1. install the new files on every server (and every member, below), and check `sam status`");
    if kind.in_member_credentials() {
        print_member_reissue(&dir, 2)?;
    }
    println!("  then: sam keygen --dir {} --promote {name} {id}", dir.display());
    Ok(())
}

fn promote(dir: &Path, kind: KindArg, id: u16) -> Result<()> {
    let dir = absolute(dir)?;
    let mut server = load_server(&dir)?;
    find(&server, kind, id, &dir)?;
    for k in server.keys.iter_mut().filter(|k| k.kind == kind.kind()) {
        k.accept_only = k.id != id;
    }
    rewrite(&dir, &server)?;
    let name = kind.kind().name();
    println!("{name} key {id} now seals; the other {name} keys only open");
    print_rewrote(&dir);
    print_kind(&server, kind);
    println!("next:");
    println!("  1. install the new files on every server");
    if kind.in_member_credentials() {
        print_member_reissue(&dir, 2)?;
    }
    if let Some(old) = server.of_kind(kind.kind()).find(|k| k.id != id) {
        println!(
            "  then, once nothing seals with the old key: sam keygen --dir {} --retire {name} {}",
            dir.display(),
            old.id
        );
    }
    Ok(())
}

fn retire(dir: &Path, kind: KindArg, id: u16) -> Result<()> {
    let dir = absolute(dir)?;
    let mut server = load_server(&dir)?;
    let name = kind.kind().name();
    if !find(&server, kind, id, &dir)?.accept_only {
        bail!("{name} key {id} is the sealing key; promote another {name} key first (--promote {name} ID)");
    }
    server.keys.retain(|k| !(k.kind == kind.kind() && k.id == id));
    rewrite(&dir, &server)?;
    println!("retired {name} key {id}");
    print_rewrote(&dir);
    print_kind(&server, kind);
    println!("next:");
    println!("  1. install the new files on every server");
    if kind.in_member_credentials() {
        print_member_reissue(&dir, 2)?;
    }
    Ok(())
}

/// The servers' keys in `dir`, checked to be the servers' file.
fn load_server(dir: &Path) -> Result<Keyring> {
    let path = dir.join(SERVER_FILE);
    let ring = credential::load(&path).context("reading the servers' keys")?;
    let missing =
        [KeyKind::Server, KeyKind::Group, KeyKind::MemberMaster].into_iter().find(|&k| ring.sealing(k).is_none());
    if ring.member.is_some() || missing.is_some() {
        bail!("{}: is not the servers' key file (written by `sam keygen --dir DIR`)", path.display());
    }
    Ok(ring)
}

/// The key `id` of `kind`; the error lists the ids there are.
fn find<'a>(server: &'a Keyring, kind: KindArg, id: u16, dir: &Path) -> Result<&'a Key> {
    match server.key(kind.kind(), id) {
        Some(k) => Ok(k),
        None => {
            let ids: Vec<String> = server.of_kind(kind.kind()).map(|k| k.id.to_string()).collect();
            bail!(
                "{} holds no {} key {id} (its {0} keys: {})",
                dir.join(SERVER_FILE).display(),
                kind.kind().name(),
                ids.join(", ")
            )
        }
    }
}

/// Rewrites the servers' file, then the checkpoint file derived from it, each atomically (the
/// caller says so once it has said why).
fn rewrite(dir: &Path, server: &Keyring) -> Result<()> {
    let server_path = dir.join(SERVER_FILE);
    credential::replace(server, &server_path, None)?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    credential::replace(&Keyring::checkpoint_from(server), &checkpoint_path, None)
        .with_context(|| format!("{} was rewritten; run the command again to finish", server_path.display()))?;
    Ok(())
}

/// Names the two files a rotation step rewrote.
fn print_rewrote(dir: &Path) {
    println!("rewrote {} and {}", dir.join(SERVER_FILE).display(), dir.join(CHECKPOINT_FILE).display());
}

/// One line per key of `kind`: its id and whether it seals.
fn print_kind(server: &Keyring, kind: KindArg) {
    let mut keys: Vec<&Key> = server.of_kind(kind.kind()).collect();
    keys.sort_by_key(|k| k.id);
    let shown: Vec<String> =
        keys.iter().map(|k| format!("{} ({})", k.id, if k.accept_only { "accept-only" } else { "seals" })).collect();
    println!("{} keys: {}", kind.kind().name(), shown.join(", "));
}

/// Tells how to give every member whose credential is in `dir` its new credential.
fn print_member_reissue(dir: &Path, step: usize) -> Result<()> {
    let names = member_names(dir)?;
    println!("  {step}. member credentials hold these keys: re-issue each and install it on its member's host:");
    if names.is_empty() {
        println!("     sam keygen --dir {} --member NAME --replace", dir.display());
    }
    for name in names {
        println!("     sam keygen --dir {} --member {name} --replace", dir.display());
    }
    Ok(())
}

/// The names of the member credentials in `dir`, sorted.
fn member_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let file = entry.with_context(|| format!("listing {}", dir.display()))?.file_name();
        let Some(file) = file.to_str() else { continue };
        if let Some(name) = file.strip_prefix("member-").and_then(|f| f.strip_suffix(".key")) {
            if credential::is_member_name(name) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// `path` made absolute, so that the printed paths mean the same from any directory.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: cannot make the path absolute", path.display()))
}

/// `path` as a TOML string (a JSON string is a valid TOML basic string).
fn toml_path(path: &Path) -> Result<String> {
    let text =
        path.to_str().with_context(|| format!("{}: not UTF-8, so no configuration can name it", path.display()))?;
    Ok(serde_json::to_string(text)?)
}

/// Warns when other users may list the key directory (the files themselves stay 0600).
fn warn_if_shared(dir: &Path) {
    if let Ok(meta) = fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} has mode {mode:04o}; chmod 700 it so that other users cannot list it",
                dir.display()
            );
        }
    }
}
