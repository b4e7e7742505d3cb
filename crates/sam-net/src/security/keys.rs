//! The keys a process holds, and how the keys of one tier are derived from another
//! (DESIGN section 12, "Keys").
//!
//! Four tiers: the *server key* (servers only), the *checkpoint key* (derived from the server
//! key, held by checkpoint servers), the *group key* (servers and members: everything
//! multicast or relayed to the group) and the *member master* (servers only), from which each
//! member credential's key is derived. Secrets live in zeroizing memory and never show in
//! `Debug`. Files are `sam_node::credential`'s business; this module holds no IO but the OS RNG.

use std::fmt;

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use sam_core::Pid;
use zeroize::Zeroizing;

/// The bytes of every secret key.
pub const SECRET_BYTES: usize = 32;

/// Member pids have the top bit set; a credential owns the 2^32 pids that differ from its
/// own in the low 32 bits, so many processes may share one credential without two drawing
/// the same pid.
pub const MEMBER_PIDS: u64 = Pid::MEMBER;
/// The low bits of a member pid that a process picks for itself (its instance).
pub const MEMBER_INSTANCE_BITS: u32 = Pid::INSTANCE_BITS;

/// A cluster's id: drawn when its configuration is made, named by every frame so that two
/// clusters sharing groups and ports never hear each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// A fresh id from the OS RNG.
    pub fn generate() -> Result<ClusterId, KeyError> {
        Ok(ClusterId(u64::from_le_bytes(random()?)))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(ClusterId)
    }
}

/// The AEAD a cluster's keys seal with: fixed by the key file, never negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-256-GCM: the fastest where the CPU has AES instructions (the default).
    Aes256Gcm,
    /// ChaCha20-Poly1305: for CPUs without AES instructions.
    ChaCha20Poly1305,
}

impl Suite {
    /// Every suite, in code order.
    pub const ALL: [Suite; 2] = [Suite::Aes256Gcm, Suite::ChaCha20Poly1305];

    /// Its byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Suite::Aes256Gcm => 1,
            Suite::ChaCha20Poly1305 => 2,
        }
    }

    /// Its name in key files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes256Gcm => "aes-256-gcm",
            Suite::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The suite of a name.
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    pub(crate) fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Suite::Aes256Gcm => &ring::aead::AES_256_GCM,
            Suite::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        }
    }
}

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// Seals what servers send each other; only servers hold it.
    Server,
    /// Seals what checkpoint servers send servers (reports, blocks); derived from the server key.
    Checkpoint,
    /// Seals everything multicast or relayed to the group, and what members send.
    Group,
    /// Servers derive each member credential's key from it.
    MemberMaster,
    /// A member credential's own key (the second tag of what it sends).
    Member,
}

impl KeyKind {
    /// Every kind.
    pub const ALL: [KeyKind; 5] =
        [KeyKind::Server, KeyKind::Checkpoint, KeyKind::Group, KeyKind::MemberMaster, KeyKind::Member];

    /// Its name in key files.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Server => "server",
            KeyKind::Checkpoint => "checkpoint",
            KeyKind::Group => "group",
            KeyKind::MemberMaster => "member-master",
            KeyKind::Member => "member",
        }
    }

    /// The kind of a name.
    pub fn from_name(name: &str) -> Option<KeyKind> {
        KeyKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A 256-bit secret, wiped from memory when dropped and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<[u8; SECRET_BYTES]>);

impl Secret {
    /// A secret of these bytes.
    pub fn new(bytes: [u8; SECRET_BYTES]) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// A fresh secret from the OS RNG.
    pub fn generate() -> Result<Secret, KeyError> {
        Ok(Secret::new(random()?))
    }

    /// The bytes, for sealing and for writing a key file.
    pub fn expose(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One key: its kind, its id (so that two keys of a kind can be live during a rotation), and
/// whether it only opens frames (a new key being installed, or an old one being retired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// What it is for.
    pub kind: KeyKind,
    /// Its id, named by every frame sealed with it.
    pub id: u16,
    /// The secret.
    pub secret: Secret,
    /// Opens frames but seals none.
    pub accept_only: bool,
}

/// The keys one process holds, for one cluster and suite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    /// The cluster the keys belong to.
    pub cluster: ClusterId,
    /// The AEAD they seal with.
    pub suite: Suite,
    /// A member credential's pid (its low [`MEMBER_INSTANCE_BITS`] bits zero); `None` for
    /// servers.
    pub member: Option<Pid>,
    /// The keys.
    pub keys: Vec<Key>,
}

impl Keyring {
    /// The key of `kind` that seals: the highest id that is not accept-only.
    pub fn sealing(&self, kind: KeyKind) -> Option<&Key> {
        self.keys.iter().filter(|k| k.kind == kind && !k.accept_only).max_by_key(|k| k.id)
    }

    /// The key of `kind` with `id`, sealing or accept-only.
    pub fn key(&self, kind: KeyKind, id: u16) -> Option<&Key> {
        self.keys.iter().find(|k| k.kind == kind && k.id == id)
    }

    /// Every key of `kind`.
    pub fn of_kind(&self, kind: KeyKind) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(move |k| k.kind == kind)
    }

    /// A server's keys for a new cluster: server, group and member master, each with id 1.
    pub fn generate_server(cluster: ClusterId, suite: Suite) -> Result<Keyring, KeyError> {
        let key = |kind| Ok::<_, KeyError>(Key { kind, id: 1, secret: Secret::generate()?, accept_only: false });
        let keys = vec![key(KeyKind::Server)?, key(KeyKind::Group)?, key(KeyKind::MemberMaster)?];
        Ok(Keyring { cluster, suite, member: None, keys })
    }

    /// A checkpoint server's keys, from a server's: the checkpoint keys derived from every
    /// server key, the group keys, and the member masters (a checkpoint server is a member
    /// that must know which member sent what, as every server does).
    pub fn checkpoint_from(server: &Keyring) -> Keyring {
        let checkpoint = server.of_kind(KeyKind::Server).map(|k| checkpoint_key(k, server.cluster));
        let shared = server.keys.iter().filter(|k| matches!(k.kind, KeyKind::Group | KeyKind::MemberMaster));
        let keys = checkpoint.chain(shared.cloned()).collect();
        Keyring { cluster: server.cluster, suite: server.suite, member: None, keys }
    }

    /// A member credential for `name`, from a server's keys: the group keys and the member key
    /// derived from every member master.
    pub fn member_from(server: &Keyring, name: &str) -> Keyring {
        let pid = member_pid(name);
        let member = server.of_kind(KeyKind::MemberMaster).map(|m| member_key(m, server.cluster, pid));
        let keys = server.of_kind(KeyKind::Group).cloned().chain(member).collect();
        Keyring { cluster: server.cluster, suite: server.suite, member: Some(pid), keys }
    }
}

/// The pid of the member credential called `name`: in the member range, the instance bits zero.
pub fn member_pid(name: &str) -> Pid {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        [b"sam/1 member name ".as_slice(), name.as_bytes()].concat().as_slice(),
    );
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_ref()[..8]);
    let bits = u64::from_le_bytes(head) & ((1 << (63 - MEMBER_INSTANCE_BITS)) - 1);
    Pid(MEMBER_PIDS | bits << MEMBER_INSTANCE_BITS)
}

/// `K_pid = HKDF(member master, salt = cluster id, "sam/1 member" ‖ master id ‖ pid)`.
pub fn member_key(master: &Key, cluster: ClusterId, pid: Pid) -> Key {
    let secret = derive(
        master.expose(),
        cluster,
        &[b"sam/1 member", &master.id.to_le_bytes(), &pid.credential().0.to_le_bytes()],
    );
    Key { kind: KeyKind::Member, id: master.id, secret, accept_only: master.accept_only }
}

/// The checkpoint key of a server key: `HKDF(server key, salt = cluster id, "sam/1 checkpoint" ‖ id)`.
pub fn checkpoint_key(server: &Key, cluster: ClusterId) -> Key {
    let secret = derive(server.expose(), cluster, &[b"sam/1 checkpoint", &server.id.to_le_bytes()]);
    Key { kind: KeyKind::Checkpoint, id: server.id, secret, accept_only: server.accept_only }
}

impl Key {
    fn expose(&self) -> &[u8; SECRET_BYTES] {
        self.secret.expose()
    }
}

/// HKDF-SHA256 of `key` with the cluster id as salt and `info` (concatenated), 32 bytes out.
pub(crate) fn derive(key: &[u8; SECRET_BYTES], cluster: ClusterId, info: &[&[u8]]) -> Secret {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &cluster.0.to_le_bytes());
    let prk = salt.extract(key);
    let mut out = Zeroizing::new([0u8; SECRET_BYTES]);
    // 32 bytes is far below HKDF's limit of 255 hash lengths: neither call can fail.
    prk.expand(info, Len32).and_then(|okm| okm.fill(&mut out[..])).expect("HKDF of 32 bytes");
    Secret(out)
}

/// The output length of [`derive`].
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        SECRET_BYTES
    }
}

/// `N` bytes from the OS RNG.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| KeyError::Rng)?;
    Ok(bytes)
}

/// Why keys could not be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let ring = Keyring::generate_server(ClusterId(7), Suite::Aes256Gcm).unwrap();
        let shown = format!("{ring:?}");
        for key in &ring.keys {
            let hex: String = key.secret.expose().iter().map(|b| format!("{b:02x}")).collect();
            assert!(!shown.contains(&hex));
            assert!(!shown.contains(&format!("{:?}", key.secret.expose())));
        }
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn member_keys_depend_on_cluster_master_and_credential_not_instance() {
        let server = Keyring::generate_server(ClusterId(7), Suite::Aes256Gcm).unwrap();
        let master = server.sealing(KeyKind::MemberMaster).unwrap();
        let alice = member_pid("alice");
        assert!(alice.is_member());
        assert_eq!(alice.credential(), alice);
        assert_ne!(alice, member_pid("bob"));
        let k = member_key(master, ClusterId(7), alice);
        assert_eq!(k, member_key(master, ClusterId(7), Pid(alice.0 | 0x1234)), "one key per credential");
        assert_ne!(k.secret, member_key(master, ClusterId(8), alice).secret);
        assert_ne!(k.secret, member_key(master, ClusterId(7), member_pid("bob")).secret);
        let credential = Keyring::member_from(&server, "alice");
        assert_eq!(credential.member, Some(alice));
        assert_eq!(credential.sealing(KeyKind::Member), Some(&k));
        assert!(credential.sealing(KeyKind::Server).is_none() && credential.sealing(KeyKind::MemberMaster).is_none());
    }

    #[test]
    fn sealing_key_is_the_highest_id_that_is_not_accept_only() {
        let mut ring = Keyring::generate_server(ClusterId(1), Suite::ChaCha20Poly1305).unwrap();
        let new = Key { kind: KeyKind::Group, id: 2, secret: Secret::generate().unwrap(), accept_only: true };
        ring.keys.push(new);
        assert_eq!(ring.sealing(KeyKind::Group).map(|k| k.id), Some(1));
        ring.keys.iter_mut().filter(|k| k.kind == KeyKind::Group).for_each(|k| k.accept_only = k.id == 1);
        assert_eq!(ring.sealing(KeyKind::Group).map(|k| k.id), Some(2));
        assert!(ring.key(KeyKind::Group, 1).is_some());
        let checkpoint = Keyring::checkpoint_from(&ring);
        assert_eq!(
            checkpoint.sealing(KeyKind::Checkpoint),
            Some(&checkpoint_key(ring.sealing(KeyKind::Server).unwrap(), ClusterId(1)))
        );
    }
}
