//! A one-time import of ACL 1.0's `plain_acl.yml` into users and ACLs, the
//! way upstream's migration does it: each account becomes a user (`admin:
//! true` a Super user); `topicPerms` / `groupPerms` become a Custom policy;
//! `defaultTopicPerm` / `defaultGroupPerm` a Default policy on `Topic:*` /
//! `Group:*`. PUB is Pub, SUB is Sub, `PUB|SUB` both, DENY is All + Deny.
//! IP whitelists are not imported: in 1.0 they skipped the signature
//! check, which Spate never does; the report lists them.

use yaml_rust2::{Yaml, YamlLoader};

use crate::error::AuthError;
use crate::model::{user_subject, Acl, Action, Decision, Policy, PolicyEntry, PolicyType, User, UserStatus, UserType};

/// What an import produced, and what it left out.
#[derive(Debug, Default)]
pub struct Import {
    pub users: Vec<User>,
    pub acls: Vec<Acl>,
    /// One line per thing not imported.
    pub notes: Vec<String>,
}

/// Reads a `plain_acl.yml`. Nothing is applied here: the caller creates
/// the users and ACLs (and skips those that exist).
pub fn parse(text: &str) -> Result<Import, AuthError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| AuthError::Invalid(format!("plain_acl.yml: {e}")))?;
    let doc = docs.first().ok_or_else(|| AuthError::Invalid("plain_acl.yml is empty".into()))?;
    let mut out = Import::default();
    if let Some(global) = doc["globalWhiteRemoteAddresses"].as_vec().filter(|v| !v.is_empty()) {
        out.notes.push(format!(
            "globalWhiteRemoteAddresses ({} entries) not imported: Spate never skips authentication by address",
            global.len()
        ));
    }
    let Some(accounts) = doc["accounts"].as_vec() else {
        return Err(AuthError::Invalid("plain_acl.yml has no `accounts` list".into()));
    };
    for (i, account) in accounts.iter().enumerate() {
        let access_key = scalar(&account["accessKey"]).ok_or_else(|| invalid(i, "accessKey"))?;
        let secret_key = scalar(&account["secretKey"]).ok_or_else(|| invalid(i, "secretKey"))?;
        let user = User {
            username: access_key.clone(),
            password: Some(secret_key),
            user_type: if account["admin"].as_bool() == Some(true) { UserType::Super } else { UserType::Normal },
            user_status: UserStatus::Enable,
        };
        user.validate().map_err(|e| AuthError::Invalid(format!("account {}: {e}", i + 1)))?;
        if scalar(&account["whiteRemoteAddress"]).is_some_and(|w| !w.is_empty()) {
            out.notes.push(format!("whiteRemoteAddress of {access_key} not imported"));
        }
        let mut custom = Vec::new();
        for (field, kind) in [("topicPerms", "Topic"), ("groupPerms", "Group")] {
            for perm in account[field].as_vec().into_iter().flatten() {
                let Some(perm) = scalar(perm) else { continue };
                let Some((name, value)) = perm.split_once('=') else {
                    out.notes.push(format!("{access_key}: `{perm}` in {field} is not name=PERM; skipped"));
                    continue;
                };
                custom.push(entry(&format!("{kind}:{}", name.trim()), value)?);
            }
        }
        let mut default = Vec::new();
        for (field, resource) in [("defaultTopicPerm", "Topic:*"), ("defaultGroupPerm", "Group:*")] {
            // A missing default is DENY in 1.0.
            let value = scalar(&account[field]).unwrap_or_else(|| "DENY".into());
            default.push(entry(resource, &value)?);
        }
        out.acls.push(Acl {
            subject: user_subject(&access_key),
            policies: vec![
                Policy { policy_type: PolicyType::Custom, entries: custom },
                Policy { policy_type: PolicyType::Default, entries: default },
            ],
        });
        out.users.push(user);
    }
    Ok(out)
}

/// One 1.0 permission as a policy entry; anything but PUB, SUB and their
/// pair is DENY, as in 1.0.
fn entry(resource: &str, perm: &str) -> Result<PolicyEntry, AuthError> {
    let (actions, decision) = match perm.trim() {
        "PUB" => (vec![Action::Pub], Decision::Allow),
        "SUB" => (vec![Action::Sub], Decision::Allow),
        "PUB|SUB" | "SUB|PUB" => (vec![Action::Pub, Action::Sub], Decision::Allow),
        _ => (vec![Action::All], Decision::Deny),
    };
    Ok(PolicyEntry { resource: resource.parse()?, actions, source_ips: vec![], decision })
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn invalid(i: usize, field: &str) -> AuthError {
    AuthError::Invalid(format!("plain_acl.yml: account {} has no {field}", i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::{decide, Need};
    use crate::model::ResourceType;

    const SAMPLE: &str = "
globalWhiteRemoteAddresses: [10.10.103.*, 192.168.0.*]
accounts:
  - accessKey: RocketMQ
    secretKey: 12345678
    whiteRemoteAddress:
    admin: false
    defaultTopicPerm: DENY
    defaultGroupPerm: SUB
    topicPerms: [topicA=DENY, topicB=PUB|SUB, topicC=SUB]
    groupPerms:
      - groupA=DENY
      - groupB=PUB|SUB
  - accessKey: rocketmq2
    secretKey: 12345678
    whiteRemoteAddress: 192.168.1.*
    admin: true
";

    #[test]
    fn the_upstream_sample_imports_as_upstream_migrates_it() {
        let imp = parse(SAMPLE).unwrap();
        assert_eq!(imp.users.len(), 2);
        assert_eq!(imp.users[0].password.as_deref(), Some("12345678"));
        assert_eq!(imp.users[1].user_type, UserType::Super);
        assert_eq!(imp.notes.len(), 2, "{:?}", imp.notes);
        let acl = &imp.acls[0];
        let ip = "127.0.0.1".parse().unwrap();
        let can = |kind, name, action| decide(Some(acl), &Need { kind, name, actions: &[action] }, ip).is_ok();
        assert!(!can(ResourceType::Topic, "topicA", Action::Pub));
        assert!(can(ResourceType::Topic, "topicB", Action::Pub));
        assert!(can(ResourceType::Topic, "topicC", Action::Sub) && !can(ResourceType::Topic, "topicC", Action::Pub));
        assert!(!can(ResourceType::Topic, "other", Action::Sub));
        assert!(!can(ResourceType::Group, "groupA", Action::Sub));
        assert!(can(ResourceType::Group, "anyGroup", Action::Sub));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(parse("accounts: [{secretKey: abcdefgh}]").unwrap_err().to_string().contains("accessKey"));
        assert!(parse("x: 1").is_err());
        assert!(parse("accounts: [{accessKey: '../x', secretKey: abcdefgh}]").is_err());
        assert!(parse("accounts: [ {").is_err());
    }
}
