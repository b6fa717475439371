//! Why a broker operation did not do what was asked, in RocketMQ's response
//! codes, whichever front end asked. The operations (send, pop, ack, ...)
//! return a [`Refusal`]; the remoting front end writes it as an error
//! response, the gRPC front end maps its code to a RocketMQ 5 status.

use spate_remoting::{response, RemotingCommand};
use spate_store::StoreError;

use crate::error::BrokerError;

/// An answer other than plain success: a response code and a remark saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: i32,
    pub remark: String,
}

impl Refusal {
    pub fn new(code: i32, remark: impl Into<String>) -> Refusal {
        Refusal { code, remark: remark.into() }
    }

    /// The remoting error response to `req` saying this.
    pub fn response(&self, req: &RemotingCommand) -> RemotingCommand {
        RemotingCommand::error(req, self.code, self.remark.clone())
    }

    /// What a client is told of a store failure.
    pub fn from_store(e: &StoreError) -> Refusal {
        let code = match e {
            StoreError::InvalidMessage(_) => response::MESSAGE_ILLEGAL,
            StoreError::NotWritable(_) => response::SERVICE_NOT_AVAILABLE,
            StoreError::Busy(_) => response::SYSTEM_BUSY,
            StoreError::FlushTimeout { .. } => response::FLUSH_DISK_TIMEOUT,
            _ => response::SYSTEM_ERROR,
        };
        Refusal::new(code, e.to_string())
    }
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Refusal {
        match e {
            BrokerError::Header(_) | BrokerError::Body(_) => Refusal::new(response::INVALID_PARAMETER, e.to_string()),
            BrokerError::Store(se) => Refusal::from_store(&se),
            _ => Refusal::new(response::SYSTEM_ERROR, e.to_string()),
        }
    }
}
