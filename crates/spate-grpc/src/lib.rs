//! RocketMQ 5's gRPC protocol (`apache.rocketmq.v2.MessagingService`), the
//! protocol the official 5.x SDKs speak, for Spate's broker:
//!
//! - [`pb`]: the messages, the service trait and a client, generated at
//!   build time from the `.proto` files of apache/rocketmq-apis, vendored
//!   unchanged under `proto/` (Apache-2.0, see `proto/LICENSE` and the
//!   repository's NOTICE);
//! - [`settings`]: the settings a server answers a client's Telemetry
//!   with (clients hang or break without their required fields);
//! - [`headers`]: the request metadata every call carries;
//! - [`status`]: RocketMQ's status envelope, which travels inside a gRPC
//!   OK for business outcomes.
//!
//! No storage and no broker state: the broker's front end uses these.

pub mod convert;
pub mod headers;
pub mod settings;
pub mod status;

/// `apache.rocketmq.v2`, generated from the vendored protos.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("apache.rocketmq.v2");
}
