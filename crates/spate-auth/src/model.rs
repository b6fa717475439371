//! Users and ACLs, RocketMQ 2.0's model and JSON shapes (`UserInfo`,
//! `AclInfo`), so its mqadmin and Spate's admin send the same bodies.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// Longest user name; names are also access keys on the wire.
pub const USERNAME_MAX_LEN: usize = 64;
/// Shortest and longest password (upstream 1.0 required more than 6).
pub const PASSWORD_MIN_LEN: usize = 6;
pub const PASSWORD_MAX_LEN: usize = 256;
/// Bounds on one ACL, so a request body cannot grow the tables without limit.
pub const POLICY_ENTRIES_MAX: usize = 256;
pub const SOURCE_IPS_MAX: usize = 64;
/// Longest resource name (a topic is at most 127 characters).
pub const RESOURCE_NAME_MAX_LEN: usize = 255;

/// Super users pass every authorization check; Normal users need policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum UserType {
    Super,
    #[default]
    Normal,
}

/// A disabled user fails authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    #[default]
    Enable,
    Disable,
}

/// One user. The password is the HMAC key, so it is stored as given; it is
/// never serialized by [`User::public`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub user_type: UserType,
    #[serde(default)]
    pub user_status: UserStatus,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("user_type", &self.user_type)
            .field("user_status", &self.user_status)
            .finish()
    }
}

impl User {
    /// The user as read APIs show it: no password.
    pub fn public(&self) -> User {
        User { password: None, ..self.clone() }
    }

    /// Checks the name and, when set, the password.
    pub fn validate(&self) -> Result<(), AuthError> {
        validate_username(&self.username)?;
        if let Some(p) = &self.password {
            if !(PASSWORD_MIN_LEN..=PASSWORD_MAX_LEN).contains(&p.len()) || p.chars().any(char::is_control) {
                return Err(AuthError::Invalid(format!(
                    "the password of user {} must be {PASSWORD_MIN_LEN} to {PASSWORD_MAX_LEN} printable characters",
                    self.username
                )));
            }
        }
        Ok(())
    }
}

/// A user name: letters, digits, `_ - . @`, at most [`USERNAME_MAX_LEN`].
pub fn validate_username(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= USERNAME_MAX_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "invalid user name `{}`: 1 to {USERNAME_MAX_LEN} of letters, digits, _ - . @",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// In a policy: every action.
    All,
    /// In a policy: every action (upstream's second spelling).
    Any,
    Pub,
    Sub,
    Create,
    Update,
    Delete,
    Get,
    List,
}

impl Action {
    /// Whether a policy entry naming `self` covers a request for `wanted`.
    pub fn covers(self, wanted: Action) -> bool {
        matches!(self, Action::All | Action::Any) || self == wanted
    }
}

impl FromStr for Action {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "all" => Action::All,
            "any" => Action::Any,
            "pub" => Action::Pub,
            "sub" => Action::Sub,
            "create" => Action::Create,
            "update" => Action::Update,
            "delete" => Action::Delete,
            "get" => Action::Get,
            "list" => Action::List,
            _ => {
                return Err(AuthError::Invalid(format!(
                    "unknown action `{s}`: All, Pub, Sub, Create, Update, Delete, Get, List"
                )))
            }
        })
    }
}

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Decision {
    #[default]
    Allow,
    Deny,
}

impl FromStr for Decision {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(Decision::Allow),
            "deny" => Ok(Decision::Deny),
            _ => Err(AuthError::Invalid(format!("unknown decision `{s}`: Allow or Deny"))),
        }
    }
}

/// What a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// `*`: every resource of every type.
    Any,
    Cluster,
    Namespace,
    Topic,
    Group,
}

impl ResourceType {
    fn name(self) -> &'static str {
        match self {
            ResourceType::Any => "*",
            ResourceType::Cluster => "Cluster",
            ResourceType::Namespace => "Namespace",
            ResourceType::Topic => "Topic",
            ResourceType::Group => "Group",
        }
    }
}

/// Which names of its type a policy resource covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `Topic:orders`
    Literal(String),
    /// `Topic:orders*`
    Prefixed(String),
    /// `Topic:*`
    Any,
}

/// A resource in a policy (`Topic:orders*`, `Group:g`, `Cluster`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    pub kind: ResourceType,
    pub pattern: Pattern,
}

impl Resource {
    /// Whether this policy resource covers the named resource of a request.
    pub fn covers(&self, kind: ResourceType, name: &str) -> bool {
        if self.kind == ResourceType::Any {
            return true;
        }
        self.kind == kind
            && match &self.pattern {
                Pattern::Any => true,
                Pattern::Literal(l) => l == name,
                Pattern::Prefixed(p) => name.starts_with(p.as_str()),
            }
    }

    /// How specific the resource is: the most specific matching entry
    /// decides. Literal over prefix, a longer prefix over a shorter, a whole
    /// type over `*`.
    pub fn specificity(&self) -> (u8, usize) {
        match (&self.kind, &self.pattern) {
            (ResourceType::Any, _) => (0, 0),
            (_, Pattern::Any) => (1, 0),
            (_, Pattern::Prefixed(p)) => (2, p.len()),
            (_, Pattern::Literal(_)) => (3, 0),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.pattern) {
            (ResourceType::Any, _) => f.write_str("*"),
            (k, Pattern::Any) => write!(f, "{}:*", k.name()),
            (k, Pattern::Literal(n)) => write!(f, "{}:{n}", k.name()),
            (k, Pattern::Prefixed(p)) => write!(f, "{}:{p}*", k.name()),
        }
    }
}

impl FromStr for Resource {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        let s = s.trim();
        if s == "*" {
            return Ok(Resource { kind: ResourceType::Any, pattern: Pattern::Any });
        }
        let (kind, name) = s.split_once(':').unwrap_or((s, "*"));
        let kind = match kind.to_ascii_lowercase().as_str() {
            "cluster" => ResourceType::Cluster,
            "namespace" => ResourceType::Namespace,
            "topic" => ResourceType::Topic,
            "group" => ResourceType::Group,
            _ => {
                return Err(AuthError::Invalid(format!(
                    "unknown resource `{s}`: *, Cluster, Namespace:N, Topic:T, Topic:T*, Topic:*, Group:G ..."
                )))
            }
        };
        let pattern = if name == "*" {
            Pattern::Any
        } else if let Some(prefix) = name.strip_suffix('*') {
            Pattern::Prefixed(checked_name(prefix, s)?.to_string())
        } else {
            Pattern::Literal(checked_name(name, s)?.to_string())
        };
        Ok(Resource { kind, pattern })
    }
}

fn checked_name<'a>(name: &'a str, whole: &str) -> Result<&'a str, AuthError> {
    let ok = !name.is_empty()
        && name.len() <= RESOURCE_NAME_MAX_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(AuthError::Invalid(format!("invalid resource name in `{whole}`")))
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A source address rule: a CIDR or a single address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIp(ipnet::IpNet);

impl SourceIp {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl FromStr for SourceIp {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(SourceIp)
            .map_err(|_| AuthError::Invalid(format!("invalid source address `{s}`: an IP or a CIDR")))
    }
}

impl Serialize for SourceIp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SourceIp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One rule: resource, actions, source addresses, decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    pub resource: Resource,
    pub actions: Vec<Action>,
    /// Empty: any address.
    #[serde(default)]
    pub source_ips: Vec<SourceIp>,
    #[serde(default)]
    pub decision: Decision,
}

/// Custom policies are what operators write; Default ones (imported from
/// ACL 1.0's default permissions) apply only where no Custom entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PolicyType {
    #[default]
    Custom,
    Default,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub policy_type: PolicyType,
    #[serde(default)]
    pub entries: Vec<PolicyEntry>,
}

/// The policies of one subject (`User:alice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acl {
    pub subject: String,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// `User:<name>` for a user name.
pub fn user_subject(username: &str) -> String {
    format!("User:{username}")
}

/// `f` of `User:<name>`, built on the stack when the name is no longer
/// than a valid one: the per-request ACL lookup allocates nothing.
pub fn with_user_subject<R>(username: &str, f: impl FnOnce(&str) -> R) -> R {
    const PREFIX: &[u8] = b"User:";
    let mut buf = [0u8; PREFIX.len() + USERNAME_MAX_LEN];
    let len = PREFIX.len() + username.len();
    if username.len() <= USERNAME_MAX_LEN {
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        buf[PREFIX.len()..len].copy_from_slice(username.as_bytes());
        if let Ok(subject) = std::str::from_utf8(&buf[..len]) {
            return f(subject);
        }
    }
    f(&user_subject(username))
}

impl Acl {
    /// The user a subject names.
    pub fn username(&self) -> Result<&str, AuthError> {
        subject_username(&self.subject)
    }

    /// Checks the subject and the bounds on entries.
    pub fn validate(&self) -> Result<(), AuthError> {
        self.username()?;
        let entries: usize = self.policies.iter().map(|p| p.entries.len()).sum();
        if entries > POLICY_ENTRIES_MAX {
            return Err(AuthError::Invalid(format!("at most {POLICY_ENTRIES_MAX} entries per subject")));
        }
        for e in self.policies.iter().flat_map(|p| &p.entries) {
            if e.actions.is_empty() {
                return Err(AuthError::Invalid(format!("the entry for {} names no action", e.resource)));
            }
            if e.source_ips.len() > SOURCE_IPS_MAX {
                return Err(AuthError::Invalid(format!("at most {SOURCE_IPS_MAX} source addresses per entry")));
            }
        }
        Ok(())
    }

    /// Adds `other`'s entries: an entry for the same resource in a policy
    /// of the same type is replaced (upstream's updateAcl).
    pub fn merge(&mut self, other: Acl) {
        for incoming in other.policies {
            match self.policies.iter_mut().find(|p| p.policy_type == incoming.policy_type) {
                Some(p) => {
                    for e in incoming.entries {
                        p.entries.retain(|old| old.resource != e.resource);
                        p.entries.push(e);
                    }
                }
                None => self.policies.push(incoming),
            }
        }
    }
}

/// The user name in `User:<name>`.
pub fn subject_username(subject: &str) -> Result<&str, AuthError> {
    let name = subject
        .strip_prefix("User:")
        .ok_or_else(|| AuthError::Invalid(format!("invalid subject `{subject}`: expected User:<name>")))?;
    validate_username(name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_built_on_the_stack_is_the_allocated_one() {
        let longest = "u".repeat(USERNAME_MAX_LEN);
        let too_long = "v".repeat(USERNAME_MAX_LEN + 1);
        for name in ["bench", "a.b@c-d_e", longest.as_str(), too_long.as_str(), ""] {
            assert_eq!(with_user_subject(name, str::to_string), user_subject(name));
        }
    }

    #[test]
    fn resources_parse_and_print_back() {
        for s in ["*", "Topic:orders", "Topic:orders*", "Topic:*", "Group:g-1", "Cluster:*", "Namespace:ns"] {
            let r: Resource = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("Cluster".parse::<Resource>().unwrap().to_string(), "Cluster:*");
        for bad in ["Queue:x", "Topic:", "Topic:a/b", "Topic:../x", "Topic:a*b"] {
            assert!(bad.parse::<Resource>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn user_json_is_upstreams_and_public_view_has_no_password() {
        let u: User = serde_json::from_str(
            r#"{"username":"alice","password":"secret12","userType":"Super","userStatus":"disable"}"#,
        )
        .unwrap();
        assert_eq!(u.user_type, UserType::Super);
        assert_eq!(u.user_status, UserStatus::Disable);
        let shown = serde_json::to_string(&u.public()).unwrap();
        assert!(!shown.contains("secret12") && !shown.contains("password"), "{shown}");
        assert!(!format!("{u:?}").contains("secret12"));
    }

    #[test]
    fn acl_json_is_upstreams() {
        let acl: Acl = serde_json::from_str(
            r#"{"subject":"User:alice","policies":[{"policyType":"Custom","entries":[
                {"resource":"Topic:a*","actions":["Pub","Sub"],"sourceIps":["10.0.0.0/8","192.168.1.7"],"decision":"Deny"}]}]}"#,
        )
        .unwrap();
        acl.validate().unwrap();
        let e = &acl.policies[0].entries[0];
        assert_eq!(e.decision, Decision::Deny);
        assert!(e.source_ips[0].contains("10.1.2.3".parse().unwrap()));
        assert!(e.source_ips[1].contains("::ffff:192.168.1.7".parse().unwrap()));
        assert!(!e.source_ips[1].contains("192.168.1.8".parse().unwrap()));
    }

    #[test]
    fn names_and_subjects_are_checked() {
        assert!(validate_username("alice_01").is_ok());
        for bad in ["", "a b", "../x", "a/b", &"x".repeat(65)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
        assert!(subject_username("Group:x").is_err());
        assert_eq!(subject_username("User:bob").unwrap(), "bob");
    }
}
