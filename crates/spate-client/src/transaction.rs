//! Transactional sends, upstream's `TransactionMQProducer` model: a half
//! message is stored invisible, the local transaction runs, and its
//! outcome commits or rolls the message back. When the outcome is unknown
//! (or the END_TRANSACTION is lost) the broker later asks a producer of
//! the group, which answers from [`TransactionListener::check_local_transaction`].

use std::sync::Arc;

use spate_remoting::{request, RemotingCommand};

use crate::message::{Message, MessageExt};
use crate::producer::SendResult;

/// What a local transaction came to (upstream's `LocalTransactionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTransactionState {
    /// Deliver the message.
    CommitMessage,
    /// Discard it.
    RollbackMessage,
    /// Not known yet: the broker asks again later.
    Unknow,
}

impl LocalTransactionState {
    /// The END_TRANSACTION `commitOrRollback` value.
    pub fn wire_value(self) -> i32 {
        match self {
            LocalTransactionState::CommitMessage => spate_common::message::SYSFLAG_TX_COMMIT,
            LocalTransactionState::RollbackMessage => spate_common::message::SYSFLAG_TX_ROLLBACK,
            LocalTransactionState::Unknow => 0,
        }
    }
}

/// The application's side of a transaction (upstream's
/// `TransactionListener`). Both run on the blocking pool, so they may
/// block on a database.
pub trait TransactionListener: Send + Sync + 'static {
    /// Runs the local transaction once the half message is stored.
    fn execute_local_transaction(&self, msg: &Message) -> LocalTransactionState;
    /// Says how the transaction of a half message ended, when the broker asks.
    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState;
}

/// The result of [`crate::Producer::send_message_in_transaction`].
#[derive(Debug, Clone)]
pub struct TransactionSendResult {
    /// Where the half message was stored.
    pub send: SendResult,
    /// What the local transaction said (and what was sent to the broker).
    pub local_state: LocalTransactionState,
}

/// An END_TRANSACTION request for the half message at
/// (`half_queue_offset`, `commit_log_offset`).
pub(crate) fn end_request(
    group: &str,
    half_queue_offset: i64,
    commit_log_offset: i64,
    msg_id: &str,
    transaction_id: &str,
    state: LocalTransactionState,
    from_check: bool,
) -> RemotingCommand {
    RemotingCommand::request(request::END_TRANSACTION)
        .with("producerGroup", group)
        .with("tranStateTableOffset", half_queue_offset)
        .with("commitLogOffset", commit_log_offset)
        .with("commitOrRollback", state.wire_value())
        .with("fromTransactionCheck", from_check)
        .with("msgId", msg_id)
        .with("transactionId", transaction_id)
}

/// Runs a listener call on the blocking pool; a panic in it counts as
/// "not known yet" (the broker asks again).
pub(crate) async fn run_listener<F>(listener: Arc<dyn TransactionListener>, f: F) -> LocalTransactionState
where
    F: FnOnce(&dyn TransactionListener) -> LocalTransactionState + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(listener.as_ref())).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "transaction listener failed; state unknown");
            LocalTransactionState::Unknow
        }
    }
}
