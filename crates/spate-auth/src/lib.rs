//! Spate's authentication and authorization, protocol-neutral: the
//! remoting front end and the gRPC front end both turn a request into an
//! access key plus a [`store::Proof`], and into the [`authorize::Need`]s
//! it touches; everything else lives here.
//!
//! - [`sign`]: RocketMQ's request signatures (remoting HMAC-SHA1 over the
//!   sorted header values and the body; gRPC `MQv2-HMAC-SHA1`).
//! - [`model`]: users and ACLs in RocketMQ 2.0's JSON shapes.
//! - [`authorize`]: policy evaluation (most specific entry decides, Deny
//!   wins a tie, no match is a refusal).
//! - [`store`]: the tables a server checks against; no I/O.
//! - [`plain_acl`]: a one-time import of ACL 1.0's `plain_acl.yml`.
//!
//! Nothing here logs or returns a secret.

pub mod authorize;
pub mod error;
pub mod file;
pub mod model;
pub mod plain_acl;
mod seal;
pub mod sign;
pub mod store;

pub use authorize::Need;
pub use error::{AuthError, AuthFailure};
pub use model::{
    Acl, Action, Decision, Policy, PolicyEntry, PolicyType, Resource, ResourceType, User, UserStatus, UserType,
};
pub use store::{AuthStore, Principal, Proof, UserUpdate};

/// An access key and its secret, as a client signs with them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key", &self.access_key).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Credentials { access_key: access_key.into(), secret_key: secret_key.into() }
    }

    /// Reads RocketMQ's `{"accessKey":"AK","secretKey":"SK"}`
    /// (`innerClientAuthenticationCredentials`); `username`/`password`
    /// (`initAuthenticationUser`) are accepted too.
    pub fn from_json(text: &str) -> Result<Self, AuthError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            #[serde(alias = "username")]
            access_key: String,
            #[serde(alias = "password")]
            secret_key: String,
        }
        let raw: Raw = serde_json::from_str(text.trim())
            .map_err(|_| AuthError::Invalid("expected {\"accessKey\":\"...\",\"secretKey\":\"...\"}".into()))?;
        model::validate_username(&raw.access_key)?;
        if raw.secret_key.is_empty() {
            return Err(AuthError::Invalid(format!("empty secret for {}", raw.access_key)));
        }
        Ok(Credentials::new(raw.access_key, raw.secret_key))
    }

    /// Reads a `tools.yml`-style file: `accessKey: AK` and `secretKey: SK` lines.
    pub fn from_tools_yml(text: &str) -> Result<Self, AuthError> {
        let mut ak = None;
        let mut sk = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
            match k.trim() {
                "accessKey" => ak = Some(v),
                "secretKey" => sk = Some(v),
                _ => {}
            }
        }
        match (ak, sk) {
            (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok(Credentials::new(a, s)),
            _ => Err(AuthError::Invalid("expected `accessKey:` and `secretKey:` lines".into())),
        }
    }
}
