//! Spate's HA controller.
//!
//! - [`fsm`]: the replica group's state machine, a pure function from what
//!   the controller observes to the durable state it writes.
//! - [`zk`]: where that state lives in ZooKeeper, and the operations on it.
//! - [`controller`]: the stateless controller process: leadership, scans,
//!   conditional writes, telling the name servers about dead brokers.
//! - [`availability`]: outages and state transitions per group, MTBF /
//!   MTTR / nines.
//! - [`metrics`]: the controller's `/metrics` text.

pub mod availability;
pub mod controller;
pub mod fsm;
pub mod metrics;
pub mod zk;
