//! Key files (DESIGN section 12, "Keys"): what `sam keygen` writes and every process reads.
//!
//! A key file is TOML:
//!
//! ```toml
//! cluster_id = "0123456789abcdef"
//! suite = "aes-256-gcm"
//! member = "alice"          # member credentials only, with its pid
//! pid = 9372147403164303360
//!
//! [[key]]
//! kind = "group"            # server, checkpoint, group, member-master or member
//! id = 1
//! secret = "…64 hex digits…"
//! accept_only = true        # optional: opens frames, seals none
//! ```
//!
//! A file is opened without following a symbolic link and refused unless it belongs to the
//! process's effective user and no other user has any access to it, because a key anyone else
//! can read or swap is no key. Secrets pass only through zeroizing buffers, and no error
//! message or `Debug` output ever holds one: messages quote nothing but the key path and the
//! shape of what is wrong, and any long run of hex digits a parser quoted is cut out.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use sam_core::Pid;
use sam_net::security::keys::{member_pid, ClusterId, Key, KeyError, KeyKind, Keyring, Secret, Suite, SECRET_BYTES};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use thiserror::Error;
use zeroize::Zeroizing;

/// The servers' key file in a `sam keygen` directory.
pub const SERVER_FILE: &str = "server.key";
/// The checkpoint servers' key file in a `sam keygen` directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.key";
/// The longest member name.
pub const MEMBER_NAME_MAX: usize = 64;
/// The largest key file read: a file of a thousand keys is a tenth of this, so a larger one is
/// not a key file, and reading it whole would only cost memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The file name of member `name`'s credential in a `sam keygen` directory.
pub fn member_file(name: &str) -> String {
    format!("member-{name}.key")
}

/// Whether `name` may name a member credential: 1 to 64 of `A-Z a-z 0-9 . _ -`, so that it is
/// safe in a file name, a shell command and a TOML string alike.
pub fn is_member_name(name: &str) -> bool {
    (1..=MEMBER_NAME_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A cluster id as files and configurations write it: exactly 16 hex digits (what
/// `ClusterId`'s `Display` writes), so that a truncated or padded id is an error, not another
/// cluster.
pub fn parse_cluster_id(text: &str) -> Option<ClusterId> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok().map(ClusterId)
}

/// Why a key file cannot be read or written. Every message names the file; none holds a
/// secret.
#[derive(Debug, Error)]
pub enum CredentialError {
    /// The path is a symbolic link (refused so that nobody can point a process at another file).
    #[error(
        "{}: is a symbolic link; key files are opened only directly (name the file itself)",
        path.display()
    )]
    Symlink {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be opened.
    #[error("cannot open the key file {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The path is a directory, device or pipe.
    #[error("{}: is not a regular file", path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// The file belongs to another user, who could change it.
    #[error(
        "{}: is owned by uid {owner}, not by this process's user (uid {euid}); a key file must belong \
         to the user that reads it: chown {euid} {}",
        path.display(),
        path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The process's effective uid.
        euid: u32,
    },
    /// Users other than the owner have some access to the file.
    #[error(
        "{}: has mode {mode:04o}, which lets other users at it; a key file must be private: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than any key file.
    #[error("{}: is larger than {MAX_FILE_BYTES} bytes, which no key file is", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read the key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The text is not a key file's TOML.
    #[error("{}: {}{message}", path.display(), at_line(*line))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line of the error, from 1, when the parser knows it.
        line: Option<usize>,
        /// What is wrong (any secret-like text cut out).
        message: String,
    },
    /// The file parsed, but its keys break a rule (no keys, a duplicate, a bad secret).
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Writing would overwrite a key file.
    #[error(
        "{}: exists already; key files are never overwritten (remove it first, or use the \
         rotation commands of `sam keygen`)",
        path.display()
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file or its directory could not be written.
    #[error("cannot write the key file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Keys for the file could not be made.
    #[error("cannot make keys for {}: {source}", path.display())]
    Keys {
        /// The file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map_or_else(String::new, |l| format!("line {l}: "))
}

/// Reads the key file at `path`: opened without following a symbolic link, refused unless it
/// is a regular file owned by the effective user with no access for group or others, then
/// parsed and checked (at least one key, no two of one kind and id, secrets of 32 bytes, a
/// member's pid that is its name's, a sealing key for every kind).
pub fn load(path: &Path) -> Result<Keyring, CredentialError> {
    let file = open_private(path)?;
    let bytes = read_bounded(file, path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| CredentialError::Parse {
        path: path.to_path_buf(),
        line: Some(line_of(&bytes[..e.valid_up_to()])),
        message: "not UTF-8 text".to_string(),
    })?;
    let parsed: FileText = toml::from_str(text).map_err(|e| CredentialError::Parse {
        path: path.to_path_buf(),
        line: e.span().map(|s| line_of(text.as_bytes().get(..s.start).unwrap_or_default())),
        message: redact(e.message()),
    })?;
    let invalid = |problem: String| CredentialError::Invalid { path: path.to_path_buf(), problem: redact(&problem) };
    let (ring, name) = parsed.into_ring().map_err(invalid)?;
    check_ring(&ring, name.as_deref()).map_err(invalid)?;
    Ok(ring)
}

/// Writes `ring` to a new file at `path` (mode 0600, its directory made with mode 0700 when
/// missing), synced with its directory; refuses to overwrite anything. `name` is the member's
/// name for a member credential and `None` otherwise.
pub fn save(ring: &Keyring, path: &Path, name: Option<&str>) -> Result<(), CredentialError> {
    let text = render_checked(ring, path, name)?;
    let dir = make_parent(path)?;
    write_new(path, &text)?;
    sync_dir(&dir, path)
}

/// Writes `ring` over the file at `path` atomically, for rotation: a private temporary file
/// `.NAME.tmp` beside it is written and synced, then renamed over it, then the directory is
/// synced; a crash leaves the old file or the new one, never a torn one.
pub fn replace(ring: &Keyring, path: &Path, name: Option<&str>) -> Result<(), CredentialError> {
    let text = render_checked(ring, path, name)?;
    let dir = make_parent(path)?;
    let write = |source| CredentialError::Write { path: path.to_path_buf(), source };
    let file_name = path.file_name().ok_or_else(|| write(io::Error::other("the path names no file")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temporary file left by a crash is ours and holds nothing the real file lacks.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(CredentialError::Write { path: tmp, source: e }),
    }
    if let Err(e) = write_new(&tmp, &text) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(write(e));
    }
    sync_dir(&dir, path)
}

/// Writes a new cluster's key files into `dir`: [`SERVER_FILE`] (server, group and member
/// master keys, id 1) and [`CHECKPOINT_FILE`] (derived from it). Refuses, writing nothing, if
/// either exists. Returns the servers' keys, from which member credentials are derived.
pub fn write_cluster_keys(dir: &Path, cluster: ClusterId, suite: Suite) -> Result<Keyring, CredentialError> {
    let server_path = dir.join(SERVER_FILE);
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    for path in [&server_path, &checkpoint_path] {
        // symlink_metadata: a dangling link is something we must not write through either.
        if fs::symlink_metadata(path).is_ok() {
            return Err(CredentialError::Exists { path: path.clone() });
        }
    }
    let server = Keyring::generate_server(cluster, suite)
        .map_err(|source| CredentialError::Keys { path: server_path.clone(), source })?;
    save(&server, &server_path, None)?;
    save(&Keyring::checkpoint_from(&server), &checkpoint_path, None)?;
    Ok(server)
}

/// Opens `path` for reading without following a final symbolic link and checks the open
/// file's owner and mode (on the descriptor, so that the file checked is the file read).
fn open_private(path: &Path) -> Result<File, CredentialError> {
    let at = || path.to_path_buf();
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer; the file-type check below
    // refuses it, and the flag changes nothing for regular files.
    let file =
        OpenOptions::new().read(true).custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits()).open(path).map_err(
            |source| match source.raw_os_error() {
                Some(code) if code == Errno::ELOOP as i32 => CredentialError::Symlink { path: at() },
                _ => CredentialError::Open { path: at(), source },
            },
        )?;
    let meta = file.metadata().map_err(|source| CredentialError::Read { path: at(), source })?;
    if !meta.file_type().is_file() {
        return Err(CredentialError::NotAFile { path: at() });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(CredentialError::Owner { path: at(), owner: meta.uid(), euid });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::Mode { path: at(), mode });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(CredentialError::TooLarge { path: at() });
    }
    Ok(file)
}

/// The file's bytes, in a buffer wiped when dropped, sized up front so that growing it never
/// leaves a copy behind in freed memory.
fn read_bounded(file: File, path: &Path) -> Result<Zeroizing<Vec<u8>>, CredentialError> {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0).min(MAX_FILE_BYTES);
    let mut bytes = Zeroizing::new(Vec::with_capacity(size as usize + 1));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CredentialError::Read { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(CredentialError::TooLarge { path: path.to_path_buf() });
    }
    Ok(bytes)
}

/// The 1-based line at the end of `before`.
fn line_of(before: &[u8]) -> usize {
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// `message` with every run of 32 or more hex digits (the length of a 16-byte secret's hex, and
/// below any key's) replaced, in case a parser quoted a secret written in the wrong place.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in message.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The whole file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    cluster_id: String,
    suite: String,
    #[serde(default)]
    member: Option<String>,
    #[serde(default)]
    pid: Option<u64>,
    /// Missing means no keys, which [`check_ring`] refuses with a clearer message than serde's.
    #[serde(default)]
    key: Vec<KeyText>,
}

/// One `[[key]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyText {
    kind: String,
    id: u16,
    secret: SecretText,
    #[serde(default)]
    accept_only: bool,
}

/// A secret's hex digits, in a string wiped when dropped.
struct SecretText(Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretText, D::Error> {
        struct SecretVisitor;
        impl Visitor<'_> for SecretVisitor {
            type Value = SecretText;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a string of {} hex digits", 2 * SECRET_BYTES)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretText, E> {
                Ok(SecretText(Zeroizing::new(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<SecretText, E> {
                Ok(SecretText(Zeroizing::new(v)))
            }
        }
        d.deserialize_str(SecretVisitor)
    }
}

impl FileText {
    /// The keyring and member name the text describes; an error names the key path.
    fn into_ring(self) -> Result<(Keyring, Option<String>), String> {
        let cluster = parse_cluster_id(&self.cluster_id)
            .ok_or_else(|| format!("cluster_id: {:?} is not 16 hex digits", self.cluster_id))?;
        let suite = Suite::from_name(&self.suite).ok_or_else(|| {
            let known: Vec<_> = Suite::ALL.iter().map(|s| format!("{:?}", s.name())).collect();
            format!("suite: unknown suite {:?} (the suites are {})", self.suite, known.join(" and "))
        })?;
        let member = match (self.member, self.pid) {
            (None, None) => None,
            (Some(name), Some(pid)) => Some((name, Pid(pid))),
            (Some(_), None) => return Err("pid: a member credential needs its pid".to_string()),
            (None, Some(_)) => return Err("member: a pid needs the member's name".to_string()),
        };
        let mut keys = Vec::with_capacity(self.key.len());
        for (i, k) in self.key.into_iter().enumerate() {
            let kind = KeyKind::from_name(&k.kind).ok_or_else(|| {
                let known: Vec<_> = KeyKind::ALL.iter().map(|k| format!("{:?}", k.name())).collect();
                format!("key[{i}].kind: unknown kind {:?} (the kinds are {})", k.kind, known.join(", "))
            })?;
            let secret = decode_secret(&k.secret.0).map_err(|problem| format!("key[{i}].secret: {problem}"))?;
            keys.push(Key { kind, id: k.id, secret, accept_only: k.accept_only });
        }
        let (name, pid) = member.unzip();
        Ok((Keyring { cluster, suite, member: pid, keys }, name))
    }
}

/// The secret of 64 hex digits; the problem never quotes them.
fn decode_secret(hex: &str) -> Result<Secret, String> {
    let digits = 2 * SECRET_BYTES;
    if hex.len() != digits {
        return Err(format!("{} characters, not the {digits} hex digits of a {SECRET_BYTES}-byte key", hex.len()));
    }
    let nibble = |b: u8| -> Result<u8, String> {
        match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            b'A'..=b'F' => Ok(b - b'A' + 10),
            _ => Err(format!("not {digits} hex digits")),
        }
    };
    let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Ok(Secret::new(*bytes))
}

/// The rules every key file keeps, on reading and on writing.
fn check_ring(ring: &Keyring, name: Option<&str>) -> Result<(), String> {
    if ring.keys.is_empty() {
        return Err("holds no key (`sam keygen` writes key files)".to_string());
    }
    for (i, k) in ring.keys.iter().enumerate() {
        if ring.keys[..i].iter().any(|o| o.kind == k.kind && o.id == k.id) {
            return Err(format!("key[{i}]: a second {} key with id {}", k.kind.name(), k.id));
        }
    }
    match (ring.member, name) {
        (None, None) => {
            if ring.keys.iter().any(|k| k.kind == KeyKind::Member) {
                return Err("holds a member key but names no member (`member` and `pid`)".to_string());
            }
        }
        (Some(pid), Some(name)) => {
            if !is_member_name(name) {
                return Err(format!(
                    "member: {name:?} is not a member name (1 to {MEMBER_NAME_MAX} of A-Z a-z 0-9 . _ -)"
                ));
            }
            let expected = member_pid(name);
            if pid != expected {
                return Err(format!("pid: {} is not the pid of member {name:?} ({})", pid.0, expected.0));
            }
            if let Some(k) = ring.keys.iter().find(|k| !matches!(k.kind, KeyKind::Group | KeyKind::Member)) {
                return Err(format!(
                    "a member credential holds only group and member keys, not a {} key",
                    k.kind.name()
                ));
            }
            if ring.sealing(KeyKind::Member).is_none() {
                return Err("a member credential needs a member key".to_string());
            }
        }
        (Some(_), None) => return Err("a member credential needs its member's name".to_string()),
        (None, Some(name)) => return Err(format!("member {name:?} named for keys that are no member credential")),
    }
    for kind in KeyKind::ALL {
        if ring.of_kind(kind).next().is_some() && ring.sealing(kind).is_none() {
            return Err(format!(
                "every {} key is accept-only, so none seals (make one the sealing key: sam keygen --promote)",
                kind.name()
            ));
        }
    }
    Ok(())
}

/// The file's text after checking the ring; the text lives in a buffer wiped when dropped.
fn render_checked(ring: &Keyring, path: &Path, name: Option<&str>) -> Result<Zeroizing<String>, CredentialError> {
    check_ring(ring, name).map_err(|problem| CredentialError::Invalid { path: path.to_path_buf(), problem })?;
    Ok(render(ring, name))
}

fn render(ring: &Keyring, name: Option<&str>) -> Zeroizing<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Reserved up front: a growing string would leave copies of secrets in freed memory.
    let mut out = Zeroizing::new(String::with_capacity(512 + ring.keys.len() * 160));
    out.push_str("# A SAM key file, written by `sam keygen`. Keep it private (mode 0600): it is a credential.\n");
    out.push_str(&format!("cluster_id = \"{}\"\nsuite = \"{}\"\n", ring.cluster, ring.suite.name()));
    if let (Some(name), Some(pid)) = (name, ring.member) {
        // check_ring allowed only names that need no escaping.
        out.push_str(&format!("member = \"{name}\"\npid = {}\n", pid.0));
    }
    for k in &ring.keys {
        out.push_str(&format!("\n[[key]]\nkind = \"{}\"\nid = {}\nsecret = \"", k.kind.name(), k.id));
        for b in k.secret.expose() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out.push_str("\"\n");
        if k.accept_only {
            out.push_str("accept_only = true\n");
        }
    }
    out
}

/// The directory of `path`, made with mode 0700 when missing.
fn make_parent(path: &Path) -> Result<PathBuf, CredentialError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| CredentialError::Write { path: path.to_path_buf(), source })?;
    }
    Ok(dir)
}

/// Creates `path` (never an existing file, never through a link) with mode 0600, writes
/// `text` and syncs it.
fn write_new(path: &Path, text: &str) -> Result<(), CredentialError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CredentialError::Exists { path: path.to_path_buf() },
            _ => CredentialError::Write { path: path.to_path_buf(), source },
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| CredentialError::Write { path: path.to_path_buf(), source })
}

/// Syncs directory `dir`, so that a new name in it survives a power failure.
fn sync_dir(dir: &Path, path: &Path) -> Result<(), CredentialError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CredentialError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn hex(secret: &Secret) -> String {
        secret.expose().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn server() -> Keyring {
        Keyring::generate_server(ClusterId(0x0123_4567_89ab_cdef), Suite::Aes256Gcm).unwrap()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Asserts that no secret of `ring` shows in `text`.
    fn no_secret_in(ring: &Keyring, text: &str) {
        for k in &ring.keys {
            assert!(!text.contains(&hex(&k.secret)), "a secret shows in: {text}");
        }
    }

    #[test]
    fn server_checkpoint_and_member_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let server = write_cluster_keys(&keys, ClusterId(42), Suite::ChaCha20Poly1305).unwrap();
        assert_eq!(mode_of(&keys), 0o700);
        for file in [SERVER_FILE, CHECKPOINT_FILE] {
            assert_eq!(mode_of(&keys.join(file)), 0o600, "{file}");
        }
        assert_eq!(load(&keys.join(SERVER_FILE)).unwrap(), server);
        assert_eq!(load(&keys.join(CHECKPOINT_FILE)).unwrap(), Keyring::checkpoint_from(&server));
        let alice = Keyring::member_from(&server, "alice");
        let path = keys.join(member_file("alice"));
        save(&alice, &path, Some("alice")).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded, alice);
        assert_eq!(loaded.member, Some(member_pid("alice")));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("member = \"alice\"") && text.contains("kind = \"member\""), "{text}");
    }

    #[test]
    fn accept_only_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = server();
        ring.keys.push(Key { kind: KeyKind::Group, id: 2, secret: Secret::generate().unwrap(), accept_only: true });
        let path = dir.path().join(SERVER_FILE);
        save(&ring, &path, None).unwrap();
        assert_eq!(load(&path).unwrap(), ring);
    }

    #[test]
    fn files_are_never_overwritten_but_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SERVER_FILE);
        let first = server();
        save(&first, &path, None).unwrap();
        let e = save(&server(), &path, None).unwrap_err();
        assert!(matches!(e, CredentialError::Exists { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(load(&path).unwrap(), first);
        let e = write_cluster_keys(dir.path(), ClusterId(1), Suite::Aes256Gcm).unwrap_err();
        assert!(matches!(e, CredentialError::Exists { .. }), "{e}");
        assert!(!dir.path().join(CHECKPOINT_FILE).exists(), "nothing written when refusing");
        let second = server();
        fs::write(dir.path().join(".server.key.tmp"), "a leftover").unwrap();
        replace(&second, &path, None).unwrap();
        assert_eq!(load(&path).unwrap(), second);
        assert_eq!(mode_of(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SERVER_FILE)], "no temporary file is left");
    }

    #[test]
    fn a_file_others_can_read_or_write_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SERVER_FILE);
        let ring = server();
        save(&ring, &path, None).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = load(&path).unwrap_err();
            assert!(matches!(e, CredentialError::Mode { mode: m, .. } if m == mode), "{e}");
            let message = e.to_string();
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load(&path).unwrap(), ring, "read-only for the owner is fine");
    }

    #[test]
    fn a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SERVER_FILE);
        save(&server(), &path, None).unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = load(&link).unwrap_err();
        assert!(matches!(e, CredentialError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("link.key"), "{e}");
        let e = save(&server(), &link, None).unwrap_err();
        assert!(matches!(e, CredentialError::Exists { .. }), "never written through a link: {e}");
        let dangling = dir.path().join("dangling.key");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(save(&server(), &dangling, None).is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a file away; the check is the same uid comparison either way.
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SERVER_FILE);
        save(&server(), &path, None).unwrap();
        std::os::unix::fs::chown(&path, Some(65_534), None).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, CredentialError::Owner { owner: 65_534, euid: 0, .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn a_directory_or_a_missing_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        fs::DirBuilder::new().mode(0o700).create(&sub).unwrap();
        assert!(matches!(load(&sub).unwrap_err(), CredentialError::NotAFile { .. }));
        let e = load(&dir.path().join("missing.key")).unwrap_err();
        assert!(matches!(e, CredentialError::Open { .. }) && e.to_string().contains("missing.key"), "{e}");
    }

    /// Writes `text` as a private file and loads it.
    fn load_text(text: impl AsRef<[u8]>) -> CredentialError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
        file.write_all(text.as_ref()).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("k.key"), "the file is named: {e}");
        e
    }

    #[test]
    fn garbage_and_broken_files_are_refused_without_showing_secrets() {
        let ring = server();
        let good = render(&ring, None).to_string();
        let secret = hex(&ring.keys[0].secret);
        let e = load_text([b'a', 0xff, 0xfe]);
        assert!(e.to_string().contains("line 1: not UTF-8"), "{e}");
        let cases: Vec<(String, &str)> = vec![
            ("\u{0}\u{1}garbage".to_string(), ""),
            ("cluster_id = \"0123456789abcdef\"\nsuite = \"aes-256-gcm\"\n".to_string(), "holds no key"),
            (good.replace(&secret, &secret[..62]), "62 characters"),
            (good.replace(&secret, &format!("{}zz", &secret[..62])), "not 64 hex digits"),
            (good.replacen("id = 1\nsecret", "id = 1\nsecrte", 1), "secrte"),
            (
                good.replacen("kind = \"group\"\nid = 1", "kind = \"server\"\nid = 1", 1),
                "a second server key with id 1",
            ),
            (good.replacen("kind = \"server\"", "kind = \"sever\"", 1), "unknown kind \"sever\""),
            (good.replace("aes-256-gcm", "des"), "unknown suite"),
            (good.replace("0123456789abcdef", "123"), "cluster_id"),
            (good.replacen("id = 1", &format!("id = \"{secret}\""), 1), "<redacted>"),
            (good.replacen("kind = \"server\"", &format!("kind = \"{secret}\""), 1), "<redacted>"),
            (good.replacen("secret = \"", "accept_only = true\nsecret = \"", 1), "accept-only"),
            (good.replacen("suite", "member = \"alice\"\nsuite", 1), "pid"),
        ];
        for (text, expected) in cases {
            let e = load_text(&text);
            let shown = format!("{e} {e:?}");
            no_secret_in(&ring, &shown);
            assert!(shown.contains(expected), "{expected:?} not in: {shown}");
        }
    }

    #[test]
    fn a_member_file_must_carry_its_names_pid_and_only_member_keys() {
        let server = server();
        let alice = Keyring::member_from(&server, "alice");
        let good = render(&alice, Some("alice")).to_string();
        let e = load_text(good.replace("member = \"alice\"", "member = \"bob\""));
        assert!(e.to_string().contains("is not the pid of member \"bob\""), "{e}");
        let mut too_much = alice.clone();
        too_much.keys.extend(server.of_kind(KeyKind::Server).cloned());
        let e = load_text(render(&too_much, Some("alice")).as_bytes());
        assert!(e.to_string().contains("not a server key"), "{e}");
        no_secret_in(&server, &format!("{e:?}"));
        let dir = tempfile::tempdir().unwrap();
        let e = save(&alice, &dir.path().join("m.key"), None).unwrap_err();
        assert!(matches!(e, CredentialError::Invalid { .. }), "{e}");
        let e = save(&alice, &dir.path().join("m.key"), Some("no/slashes")).unwrap_err();
        assert!(e.to_string().contains("not a member name"), "{e}");
    }

    #[test]
    fn member_names_and_cluster_ids_are_strict() {
        assert!(is_member_name("alice") && is_member_name("a.b_c-D9") && is_member_name(&"x".repeat(64)));
        for bad in ["", "a b", "a/b", "ä", "a\"b", &"x".repeat(65)] {
            assert!(!is_member_name(bad), "{bad:?}");
        }
        assert_eq!(parse_cluster_id("0123456789ABCDEF"), Some(ClusterId(0x0123_4567_89ab_cdef)));
        for bad in ["", "123", "+123456789abcdef", "0123456789abcdefa", "0123456789abcdeg"] {
            assert_eq!(parse_cluster_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn redaction_cuts_long_hex_runs_only() {
        assert_eq!(redact(&format!("a {} b", "ab".repeat(16))), "a <redacted> b");
        assert_eq!(redact("id 0123456789abcdef line 3"), "id 0123456789abcdef line 3");
    }
}
