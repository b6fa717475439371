//! Errors of the auth crate. None of them ever carries a secret.

use thiserror::Error;

/// A bad user, ACL or table: what the admin plane answers with.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(String),
    #[error("user {0} does not exist")]
    NoSuchUser(String),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no ACL for {0}")]
    NoSuchAcl(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("the auth tables do not parse: {0}")]
    BadTables(String),
    #[error("the sealed auth snapshot does not open with this secret")]
    Unsealable,
}

/// Why a request was refused. The `Display` text is the remark the client
/// sees: it names the access key and what failed, never a secret.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    #[error("authentication failed: the request carries no AccessKey and request code {code} is not on authenticationWhitelist")]
    MissingAccessKey { code: i32 },
    #[error(
        "authentication failed: the gRPC call carries no valid MQv2-HMAC-SHA1 authorization header and x-mq-date-time"
    )]
    MissingGrpcAuthorization,
    #[error("authentication failed: the request with AccessKey {access_key} carries no Signature")]
    MissingSignature { access_key: String },
    #[error("authentication failed: User:{access_key} is not found")]
    UnknownUser { access_key: String },
    #[error("authentication failed: User:{access_key} is disabled")]
    DisabledUser { access_key: String },
    #[error("authentication failed: check signature failed for AccessKey {access_key}")]
    BadSignature { access_key: String },
    #[error("User:{user} has no permission to {actions} {resource} from {source_ip}: {why}")]
    Denied { user: String, resource: String, actions: String, source_ip: String, why: String },
    #[error("User:{user} is not a Super user: {what} needs one")]
    NeedsSuper { user: String, what: String },
    #[error("request code {code} has no authorization rule: only Super users may send it")]
    NoRule { code: i32, user: String },
}

impl AuthFailure {
    /// The `reason` label of `spate_auth_denied_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::MissingAccessKey { .. } | AuthFailure::MissingGrpcAuthorization => "missing_access_key",
            AuthFailure::MissingSignature { .. } => "missing_signature",
            AuthFailure::UnknownUser { .. } => "unknown_user",
            AuthFailure::DisabledUser { .. } => "disabled_user",
            AuthFailure::BadSignature { .. } => "bad_signature",
            AuthFailure::Denied { .. } => "denied",
            AuthFailure::NeedsSuper { .. } => "needs_super",
            AuthFailure::NoRule { .. } => "no_rule",
        }
    }

    /// Every reason label, for metrics that show zeros before the first refusal.
    pub const REASONS: [&'static str; 8] = [
        "missing_access_key",
        "missing_signature",
        "unknown_user",
        "disabled_user",
        "bad_signature",
        "denied",
        "needs_super",
        "no_rule",
    ];
}
