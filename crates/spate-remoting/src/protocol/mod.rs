//! Protocol types shared by the name server, the broker and the client:
//! request bodies and their JSON shapes as upstream writes them.

pub mod body;
pub mod heartbeat;
pub mod json;
pub mod route;
pub mod topic;

pub use body::*;
pub use heartbeat::*;
pub use route::*;
pub use topic::*;

/// Permission bits of a topic or broker (`PermName` upstream).
pub mod perm {
    pub const PRIORITY: i32 = 1 << 3;
    pub const READ: i32 = 1 << 2;
    pub const WRITE: i32 = 1 << 1;
    pub const INHERIT: i32 = 1;
    /// Every defined bit: a perm with any other bit set is not one a broker sends.
    pub const ALL: i32 = PRIORITY | READ | WRITE | INHERIT;

    pub fn readable(p: i32) -> bool {
        p & READ != 0
    }

    pub fn writeable(p: i32) -> bool {
        p & WRITE != 0
    }
}

/// The topic a producer's first send to an unknown topic names as its template.
pub const DEFAULT_TOPIC: &str = "TBW102";
/// Prefix of a consumer group's retry topic.
pub const RETRY_GROUP_TOPIC_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic.
pub const DLQ_GROUP_TOPIC_PREFIX: &str = "%DLQ%";

/// `%RETRY%<group>`.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_GROUP_TOPIC_PREFIX}{group}")
}

/// `%DLQ%<group>`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_GROUP_TOPIC_PREFIX}{group}")
}
