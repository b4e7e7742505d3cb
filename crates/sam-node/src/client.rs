//! The application's sending handle: `send` resolves to the committed number or to why the
//! message was not committed (DESIGN section 4, sender reliability).

use std::collections::VecDeque;

use bytes::Bytes;
use sam_core::{Mid, Seq};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::node::{Command, NodeError, Reply, SendBatch};

/// Why a message given to [`Client::send`] was not committed.
#[derive(Debug, Error)]
pub enum SendFailure {
    /// Its lifetime passed without it being numbered: it never will be, anywhere.
    #[error("message {0} expired: it was not committed within its lifetime and never will be")]
    Expired(Mid),
    /// The member skipped the numbers that hold its fate by catching up from a checkpoint,
    /// and no server remembers them.
    #[error("the fate of message {0} is unknown: the log that holds it is gone")]
    OutcomeUnknown(Mid),
    /// [`Client::send_within`] gave up waiting: the message may still be committed, or not
    /// (no cluster answered, say).
    #[error("no fate within {0:?}: the message may still be committed")]
    TimedOut(std::time::Duration),
    /// The node stopped (or has no member role).
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Sends through a node and waits for each message's fate; clones share the node.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
}

impl Client {
    pub(crate) fn new(commands: mpsc::Sender<Command>) -> Client {
        Client { commands }
    }

    /// Sends `payload` to the group and resolves once it is committed, to its number. Waits
    /// while the sender's window is full; many sends may be awaited at once.
    pub async fn send(&self, payload: Bytes) -> Result<Seq, SendFailure> {
        let (reply, fate) = oneshot::channel();
        let batch = SendBatch { payloads: VecDeque::from([payload]), mids: Vec::new(), reply: Reply::Fate(reply) };
        self.commands.send(Command::Send(batch)).await.map_err(|_| NodeError::Stopped)?;
        fate.await.map_err(|_| NodeError::Stopped)?
    }

    /// Like [`Client::send`], but gives up waiting after `limit` (with no cluster running, a
    /// send waits for one to commit it): the message may still be committed afterwards.
    pub async fn send_within(&self, payload: Bytes, limit: std::time::Duration) -> Result<Seq, SendFailure> {
        tokio::time::timeout(limit, self.send(payload)).await.unwrap_or(Err(SendFailure::TimedOut(limit)))
    }
}
