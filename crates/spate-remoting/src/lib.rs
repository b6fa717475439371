//! RocketMQ's remoting protocol for Spate.
//!
//! - [`command`]: `RemotingCommand` and its JSON and binary header encodings.
//! - [`codec`]: frame splitting with the 16 MiB limit.
//! - [`connection`]: one TCP connection (plain or TLS), requests both ways, correlation by `opaque`.
//! - [`server`] and [`client`]: the accepting and the connecting side.
//! - [`tls`]: TLS settings (upstream's keys) and the rustls configurations they make.
//! - [`code`]: request and response codes.
//! - [`protocol`]: bodies and their JSON shapes, shared by servers and clients.
//! - [`access`]: who may send which request: the request-code tables and the gate.
//! - [`signing`]: RocketMQ's request signatures (client signs, server checks).
//!
//! This crate knows nothing about storage.

pub mod access;
pub mod auth_admin;
pub mod client;
pub mod code;
pub mod codec;
pub mod command;
pub mod connection;
pub mod error;
pub mod protocol;
pub mod server;
pub mod signing;
pub mod tls;
mod transport;

/// The rustls this crate is built with, to name its configurations.
pub use rustls;

pub use client::{ClientConfig, RemotingClient};
pub use code::{request, response, LanguageCode};
pub use command::{ExtFields, RemotingCommand, SerializeType};
pub use connection::OutboundReservation;
pub use connection::{BoxFuture, Connection, ConnectionConfig, RequestHandler};
pub use error::{BadHeader, FrameError, HeaderError, RemotingError};
pub use server::{AcceptLimits, RemotingServer};
pub use spate_auth::Credentials;
pub use tls::{ClientAuth, ServerTls, TlsClientSettings, TlsError, TlsMode, TlsServerSettings};
