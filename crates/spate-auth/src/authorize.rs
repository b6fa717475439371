//! Policy evaluation: which entry of a subject's ACL decides a request.
//!
//! Entries that cover the resource, one of the acceptable actions and the
//! source address are collected, from Custom policies if any match, else
//! from Default ones. The most specific decides (a literal name over a
//! prefix, a longer prefix over a shorter, a type's `*` over the global
//! `*`); when entries equally specific disagree, Deny wins. Nothing
//! matching is a refusal: the model is default-deny.

use std::net::IpAddr;

use crate::model::{Acl, Action, Decision, PolicyEntry, PolicyType, ResourceType};

/// One resource a request touches, and the actions any one of which lets
/// the request through (a route lookup is Pub, Sub or Get on its topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need<'a> {
    pub kind: ResourceType,
    pub name: &'a str,
    pub actions: &'a [Action],
}

/// Why a Normal user's request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No entry covers it.
    NoMatch,
    /// This entry denies it.
    DeniedBy(String),
}

/// Decides one resource of one request for the subject of `acl`.
pub fn decide(acl: Option<&Acl>, need: &Need<'_>, source: IpAddr) -> Result<(), Refusal> {
    let Some(acl) = acl else { return Err(Refusal::NoMatch) };
    for policy_type in [PolicyType::Custom, PolicyType::Default] {
        // One pass, no allocation (this runs on every request): the most
        // specific covering entry, the first Deny among equals.
        let mut decides: Option<(&PolicyEntry, (u8, usize))> = None;
        let covering = acl
            .policies
            .iter()
            .filter(|p| p.policy_type == policy_type)
            .flat_map(|p| &p.entries)
            .filter(|e| covers(e, need, source));
        for e in covering {
            let rank = e.resource.specificity();
            decides = match decides {
                Some((best, top)) if top > rank || (top == rank && best.decision == Decision::Deny) => {
                    Some((best, top))
                }
                _ => Some((e, rank)),
            };
        }
        let Some((best, _)) = decides else { continue };
        return match best.decision {
            Decision::Deny => Err(Refusal::DeniedBy(best.resource.to_string())),
            Decision::Allow => Ok(()),
        };
    }
    Err(Refusal::NoMatch)
}

fn covers(e: &PolicyEntry, need: &Need<'_>, source: IpAddr) -> bool {
    e.resource.covers(need.kind, need.name)
        && e.actions.iter().any(|a| need.actions.iter().any(|w| a.covers(*w)))
        && (e.source_ips.is_empty() || e.source_ips.iter().any(|s| s.contains(source)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Policy, PolicyEntry, Resource};
    use proptest::prelude::*;

    const IP: &str = "10.0.0.1";

    fn entry(resource: &str, actions: &[Action], decision: Decision) -> PolicyEntry {
        PolicyEntry { resource: resource.parse().unwrap(), actions: actions.to_vec(), source_ips: vec![], decision }
    }

    fn acl(custom: Vec<PolicyEntry>, default: Vec<PolicyEntry>) -> Acl {
        Acl {
            subject: "User:u".into(),
            policies: vec![
                Policy { policy_type: PolicyType::Custom, entries: custom },
                Policy { policy_type: PolicyType::Default, entries: default },
            ],
        }
    }

    fn topic<'a>(name: &'a str, actions: &'a [Action]) -> Need<'a> {
        Need { kind: ResourceType::Topic, name, actions }
    }

    #[test]
    fn literal_beats_prefix_beats_any_and_deny_wins_a_tie() {
        use Action::*;
        use Decision::*;
        let a = acl(
            vec![
                entry("Topic:*", &[Pub], Allow),
                entry("Topic:or*", &[Pub], Deny),
                entry("Topic:orders*", &[Pub], Allow),
                entry("Topic:orders-eu", &[Pub], Deny),
                entry("Topic:tie", &[Pub], Allow),
                entry("Topic:tie", &[All], Deny),
            ],
            vec![],
        );
        let ip = IP.parse().unwrap();
        assert_eq!(decide(Some(&a), &topic("anything", &[Pub]), ip), Ok(()));
        assert!(decide(Some(&a), &topic("orange", &[Pub]), ip).is_err());
        assert_eq!(decide(Some(&a), &topic("orders-us", &[Pub]), ip), Ok(()));
        assert_eq!(decide(Some(&a), &topic("orders-eu", &[Pub]), ip), Err(Refusal::DeniedBy("Topic:orders-eu".into())));
        assert!(decide(Some(&a), &topic("tie", &[Pub]), ip).is_err());
        assert_eq!(decide(Some(&a), &topic("anything", &[Sub]), ip), Err(Refusal::NoMatch));
        assert_eq!(decide(None, &topic("anything", &[Pub]), ip), Err(Refusal::NoMatch));
    }

    #[test]
    fn default_policies_apply_only_where_no_custom_entry_matches() {
        use Action::*;
        let a = acl(vec![entry("Topic:a", &[Pub], Decision::Deny)], vec![entry("Topic:*", &[All], Decision::Allow)]);
        let ip = IP.parse().unwrap();
        assert!(decide(Some(&a), &topic("a", &[Pub]), ip).is_err());
        assert_eq!(decide(Some(&a), &topic("b", &[Pub]), ip), Ok(()));
    }

    #[test]
    fn source_addresses_narrow_an_entry() {
        let mut e = entry("Topic:t", &[Action::Sub], Decision::Allow);
        e.source_ips = vec!["192.168.0.0/16".parse().unwrap()];
        let a = acl(vec![e], vec![]);
        assert_eq!(decide(Some(&a), &topic("t", &[Action::Sub]), "192.168.3.4".parse().unwrap()), Ok(()));
        assert!(decide(Some(&a), &topic("t", &[Action::Sub]), IP.parse().unwrap()).is_err());
    }

    #[test]
    fn any_one_acceptable_action_is_enough() {
        let a = acl(vec![entry("Topic:t", &[Action::Get], Decision::Allow)], vec![]);
        let need = topic("t", &[Action::Pub, Action::Sub, Action::Get]);
        assert_eq!(decide(Some(&a), &need, IP.parse().unwrap()), Ok(()));
    }

    /// A model of the rule written the other way round: rank every entry,
    /// keep the matching ones of the highest rank, deny if any denies.
    fn model(entries: &[(String, bool, bool)], name: &str) -> bool {
        let rank = |r: &str| -> Option<(u8, usize)> {
            if r == "*" {
                return Some((0, 0));
            }
            let n = r.strip_prefix("Topic:")?;
            if n == "*" {
                Some((1, 0))
            } else if let Some(p) = n.strip_suffix('*') {
                name.starts_with(p).then_some((2, p.len()))
            } else {
                (n == name).then_some((3, 0))
            }
        };
        let ranked: Vec<((u8, usize), bool)> = entries
            .iter()
            .filter(|(_, pubs, _)| *pubs)
            .filter_map(|(r, _, deny)| rank(r).map(|k| (k, *deny)))
            .collect();
        match ranked.iter().map(|(k, _)| *k).max() {
            None => false,
            Some(top) => !ranked.iter().any(|(k, deny)| *k == top && *deny),
        }
    }

    fn resource_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            Just("Topic:*".to_string()),
            "[ab]{1,3}".prop_map(|n| format!("Topic:{n}")),
            "[ab]{1,3}".prop_map(|n| format!("Topic:{n}*")),
        ]
    }

    proptest! {
        #[test]
        fn most_specific_decides_deny_on_tie_default_deny(
            entries in proptest::collection::vec((resource_strategy(), any::<bool>(), any::<bool>()), 0..8),
            name in "[ab]{1,3}",
        ) {
            let policy_entries = entries
                .iter()
                .map(|(r, pubs, deny)| PolicyEntry {
                    resource: r.parse::<Resource>().unwrap(),
                    actions: vec![if *pubs { Action::Pub } else { Action::Sub }],
                    source_ips: vec![],
                    decision: if *deny { Decision::Deny } else { Decision::Allow },
                })
                .collect();
            let a = acl(policy_entries, vec![]);
            let allowed = decide(Some(&a), &topic(&name, &[Action::Pub]), IP.parse().unwrap()).is_ok();
            prop_assert_eq!(allowed, model(&entries, &name));
        }
    }
}
