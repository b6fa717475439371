//! What clients tell brokers about themselves in HEART_BEAT.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Subscribe to every tag.
pub const SUB_ALL: &str = "*";

/// The body of HEART_BEAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct HeartbeatData {
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub producer_data_set: Vec<ProducerData>,
    pub consumer_data_set: Vec<ConsumerData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerData {
    pub group_name: String,
}

/// One consumer group a client belongs to. Enum-like fields stay strings
/// (`CONSUME_PASSIVELY`, `CLUSTERING`, `CONSUME_FROM_LAST_OFFSET`) so an
/// unfamiliar value from another client is kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerData {
    pub group_name: String,
    pub consume_type: String,
    pub message_model: String,
    pub consume_from_where: String,
    pub subscription_data_set: Vec<SubscriptionData>,
    pub unit_mode: bool,
}

impl ConsumerData {
    pub fn is_broadcasting(&self) -> bool {
        self.message_model.eq_ignore_ascii_case("BROADCASTING")
    }
}

/// One topic subscription with its tag expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionData {
    pub class_filter_mode: bool,
    pub topic: String,
    pub sub_string: String,
    pub tags_set: BTreeSet<String>,
    /// Tag hash codes. The Go client writes them as strings; both forms are read.
    #[serde(deserialize_with = "lenient_codes")]
    pub code_set: BTreeSet<i32>,
    pub sub_version: i64,
    /// `TAG` (the default when absent) or `SQL92`.
    pub expression_type: Option<String>,
}

/// Reads a set of numbers written as numbers or numeric strings, skipping
/// elements that are neither (the broker recomputes codes from the tags).
fn lenient_codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeSet<i32>, D::Error> {
    let raw: Option<Vec<serde_json::Value>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .iter()
        .filter_map(|v| match v {
            serde_json::Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .collect())
}

/// A parsed tag expression: `*`, or tags joined by `||` (spaces allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    All,
    Tags(BTreeSet<String>),
}

impl TagFilter {
    pub fn parse(expression: &str) -> TagFilter {
        let expression = expression.trim();
        if expression.is_empty() || expression == SUB_ALL {
            return TagFilter::All;
        }
        let tags: BTreeSet<String> =
            expression.split("||").map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect();
        if tags.is_empty() || tags.contains(SUB_ALL) {
            TagFilter::All
        } else {
            TagFilter::Tags(tags)
        }
    }

    /// Upstream's tag codes: Java `String.hashCode` of each tag.
    pub fn codes(&self) -> BTreeSet<i32> {
        match self {
            TagFilter::All => BTreeSet::new(),
            TagFilter::Tags(t) => t.iter().map(|s| java_hash(s)).collect(),
        }
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(t) => tag.is_some_and(|tag| t.contains(tag)),
        }
    }

    /// The subscription a client sends for this filter.
    pub fn subscription(&self, topic: &str, expression: &str, version: i64) -> SubscriptionData {
        SubscriptionData {
            class_filter_mode: false,
            topic: topic.to_string(),
            sub_string: expression.trim().to_string(),
            tags_set: match self {
                TagFilter::All => BTreeSet::new(),
                TagFilter::Tags(t) => t.clone(),
            },
            code_set: self.codes(),
            sub_version: version,
            expression_type: Some("TAG".into()),
        }
    }
}

fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_expressions_tolerate_spaces() {
        let f = TagFilter::parse(" TagA || TagB||TagC ");
        assert!(f.matches(Some("TagA")) && f.matches(Some("TagB")) && f.matches(Some("TagC")));
        assert!(!f.matches(Some("TagD")) && !f.matches(None));
        assert_eq!(TagFilter::parse("*"), TagFilter::All);
        assert_eq!(TagFilter::parse(""), TagFilter::All);
        assert_eq!(TagFilter::parse("a || *"), TagFilter::All);
        assert_eq!(java_hash("TagA"), 2598919);
    }

    #[test]
    fn heartbeat_without_optional_fields_decodes() {
        let body = br#"{"clientID":"c1","consumerDataSet":[{"groupName":"g","messageModel":"BROADCASTING","subscriptionDataSet":[{"topic":"t","subString":"*"}]}]}"#;
        let hb: HeartbeatData = serde_json::from_slice(body).unwrap();
        assert_eq!(hb.client_id, "c1");
        assert!(hb.consumer_data_set[0].is_broadcasting());
        assert_eq!(hb.consumer_data_set[0].subscription_data_set[0].expression_type, None);
    }

    #[test]
    fn go_client_code_sets_are_strings() {
        let body = br#"{"clientID":"go","consumerDataSet":[{"groupName":"g","subscriptionDataSet":[{"topic":"t","subString":"TagA","tagsSet":["TagA"],"codeSet":["2598919", 5, "x", null]}]}]}"#;
        let hb: HeartbeatData = serde_json::from_slice(body).unwrap();
        assert_eq!(hb.consumer_data_set[0].subscription_data_set[0].code_set, BTreeSet::from([2598919, 5]));
        let null_set: SubscriptionData = serde_json::from_slice(br#"{"topic":"t","codeSet":null}"#).unwrap();
        assert!(null_set.code_set.is_empty());
    }
}
