//! Spate's HA controller.
//!
//! - [`fsm`]: the replica group's state machine, a pure function from what
//!   the controller observes to the durable state it writes.
//! - [`zk`]: where that state lives in ZooKeeper, and the operations on it.
//! - [`controller`]: the stateless controller process: leadership, scans,
//!   conditional writes.
//! - [`availability`]: outages per group, MTBF / MTTR / nines.

pub mod availability;
pub mod controller;
pub mod fsm;
pub mod zk;
