//! Signed heartbeats (DESIGN section 12, "Signed frames"): with `sign_server_frames`, the
//! sequencer signs every heartbeat it sends with Ed25519, and a member believes a heartbeat —
//! the commit chain it names, and the checkpoint it advertises — only with a valid signature.
//! The core's member delivers nothing a signed chain does not cover, so a member credential,
//! which seals group frames as well as any server, cannot make another member deliver what
//! the sequencer did not commit.
//!
//! The signing key is derived from the server key (HKDF, like every other key of a tier): every
//! process holding the server key can sign, no other can. Checkpoint servers, which hold only
//! the checkpoint key, cannot. Members know the public keys from the configuration; a key
//! rotation lists the old and the new one until the old server key is retired.

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sam_core::message::{CheckpointInfo, Heartbeat};
use sam_core::Signature;

use super::keys::{derive, ClusterId, Key};

/// The bytes of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;

/// A public key that verifies heartbeats.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_BYTES]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = String;

    /// Exactly 64 hex digits.
    fn from_str(s: &str) -> Result<PublicKey, String> {
        let bytes = s.as_bytes();
        if bytes.len() != 2 * PUBLIC_KEY_BYTES || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("a signing key is {} hex digits", 2 * PUBLIC_KEY_BYTES));
        }
        let mut key = [0u8; PUBLIC_KEY_BYTES];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            key[i] = u8::from_str_radix(text, 16).map_err(|e| e.to_string())?;
        }
        Ok(PublicKey(key))
    }
}

/// The heartbeat signing key of server key `server`.
fn key_pair(server: &Key, cluster: ClusterId) -> Ed25519KeyPair {
    let seed = derive(server.secret.expose(), cluster, &[b"sam/1 heartbeat-signing", &server.id.to_le_bytes()]);
    // A 32-byte seed is all Ed25519 needs; any seed makes a valid key pair.
    Ed25519KeyPair::from_seed_unchecked(seed.expose()).expect("a 32-byte Ed25519 seed")
}

/// The public key that verifies the heartbeats signed under server key `server`.
pub fn public_key(server: &Key, cluster: ClusterId) -> PublicKey {
    let mut key = [0u8; PUBLIC_KEY_BYTES];
    key.copy_from_slice(key_pair(server, cluster).public_key().as_ref());
    PublicKey(key)
}

/// What a heartbeat's signature covers: every field but the signature, and the cluster.
fn signed_bytes(cluster: ClusterId, hb: &Heartbeat) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"sam/1 heartbeat");
    out.extend_from_slice(&cluster.0.to_le_bytes());
    out.extend_from_slice(&hb.epoch.0.to_le_bytes());
    out.extend_from_slice(&hb.sequencer.0.to_le_bytes());
    out.extend_from_slice(&hb.committed.0.to_le_bytes());
    out.extend_from_slice(&hb.chain.0);
    match hb.checkpoint {
        None => out.push(0),
        Some(CheckpointInfo { seq, size, blocks, digest, chain }) => {
            out.push(1);
            out.extend_from_slice(&seq.0.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&blocks.to_le_bytes());
            out.extend_from_slice(&digest.0);
            out.extend_from_slice(&chain.0);
        }
    }
    out
}

/// Signs the heartbeats a server sends.
pub struct Signer {
    pair: Ed25519KeyPair,
    cluster: ClusterId,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", PublicKey(self.public().0))
    }
}

impl Signer {
    /// The signer under server key `server`.
    pub fn new(server: &Key, cluster: ClusterId) -> Signer {
        Signer { pair: key_pair(server, cluster), cluster }
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        let mut key = [0u8; PUBLIC_KEY_BYTES];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// `hb` with its signature.
    pub fn sign(&self, hb: &Heartbeat) -> Heartbeat {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(&signed_bytes(self.cluster, hb)).as_ref());
        Heartbeat { signature: Some(Signature(signature)), ..*hb }
    }
}

/// Checks heartbeats against the cluster's public signing keys.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: Vec<PublicKey>,
    cluster: ClusterId,
}

impl Verifier {
    /// A verifier that accepts a signature by any of `keys`.
    pub fn new(keys: Vec<PublicKey>, cluster: ClusterId) -> Verifier {
        Verifier { keys, cluster }
    }

    /// Whether `hb` carries a valid signature by one of the keys.
    pub fn verify(&self, hb: &Heartbeat) -> bool {
        let Some(signature) = hb.signature else { return false };
        let message = signed_bytes(self.cluster, hb);
        self.keys.iter().any(|k| UnparsedPublicKey::new(&ED25519, k.0).verify(&message, &signature.0).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::keys::{KeyKind, Secret};
    use sam_core::{Chain, Digest, Epoch, Pid, Seq};

    fn server_key(byte: u8, id: u16) -> Key {
        Key { kind: KeyKind::Server, id, secret: Secret::new([byte; 32]), accept_only: false }
    }

    fn heartbeat() -> Heartbeat {
        let checkpoint =
            CheckpointInfo { seq: Seq(4), size: 9, blocks: 1, digest: Digest([5; 32]), chain: Chain([6; 32]) };
        Heartbeat {
            epoch: Epoch::initial(),
            sequencer: Pid(1),
            committed: Seq(7),
            chain: Chain([3; 32]),
            checkpoint: Some(checkpoint),
            signature: None,
        }
    }

    #[test]
    fn a_signed_heartbeat_verifies_and_any_change_breaks_it() {
        let cluster = ClusterId(42);
        let signer = Signer::new(&server_key(1, 1), cluster);
        assert_eq!(signer.public(), public_key(&server_key(1, 1), cluster), "derived alike");
        let verifier = Verifier::new(vec![public_key(&server_key(9, 1), cluster), signer.public()], cluster);
        let signed = signer.sign(&heartbeat());
        assert!(verifier.verify(&signed));
        assert!(!verifier.verify(&heartbeat()), "unsigned");
        let changes = [
            Heartbeat { committed: Seq(8), ..signed },
            Heartbeat { chain: Chain([4; 32]), ..signed },
            Heartbeat { sequencer: Pid(2), ..signed },
            Heartbeat { epoch: Epoch::new(2, 0), ..signed },
            Heartbeat { checkpoint: None, ..signed },
            Heartbeat {
                checkpoint: signed.checkpoint.map(|c| CheckpointInfo { chain: Chain([0; 32]), ..c }),
                ..signed
            },
        ];
        for changed in changes {
            assert!(!verifier.verify(&changed), "{changed:?}");
        }
        let other_cluster = Verifier::new(vec![signer.public()], ClusterId(43));
        assert!(!other_cluster.verify(&signed), "the cluster is signed too");
        let other_key = Signer::new(&server_key(1, 2), cluster);
        assert!(!Verifier::new(vec![other_key.public()], cluster).verify(&signed), "each key id signs apart");
    }

    #[test]
    fn public_keys_print_and_parse_as_hex() {
        let key = public_key(&server_key(1, 1), ClusterId(42));
        assert_eq!(key.to_string().parse::<PublicKey>(), Ok(key));
        assert!("zz".parse::<PublicKey>().is_err());
        assert!("ab".repeat(31).parse::<PublicKey>().is_err());
    }
}
