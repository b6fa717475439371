//! The users and ACLs a server checks requests against, in memory. Callers
//! persist [`AuthStore::to_json`] (it holds passwords: a file only its
//! owner reads) and load it back with [`AuthStore::load_json`]; this module
//! does no I/O.
//!
//! Authentication and authorization are separate steps, each a method:
//! [`AuthStore::authenticate`] turns an access key and a proof into a
//! [`Principal`], whatever protocol carried them;
//! [`AuthStore::authorize`] decides what that principal may touch.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::authorize::{decide, Need, Refusal};
use crate::error::{AuthError, AuthFailure};
use crate::model::{
    subject_username, user_subject, validate_username, with_user_subject, Acl, User, UserStatus, UserType,
};
use crate::sign::SigningKey;

/// Most users and most ACL subjects a table holds.
pub const USERS_MAX: usize = 10_000;

/// A change to a user: what is `None` stays as it is (upstream's
/// `UserInfo` with null fields).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserUpdate {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub user_type: Option<UserType>,
    #[serde(default)]
    pub user_status: Option<UserStatus>,
}

/// Who sent a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub user_type: UserType,
}

impl Principal {
    pub fn is_super(&self) -> bool {
        self.user_type == UserType::Super
    }
}

/// The proof a request carries of its access key's secret.
pub enum Proof<'a> {
    /// Remoting: the header fields received (`Signature` among them is
    /// skipped), the body, the request's version and the Base64 signature.
    /// The fields are reordered while checking.
    Remoting { fields: Vec<(&'a str, &'a str)>, body: &'a [u8], request_version: i32, signature: &'a str },
    /// gRPC MQv2: the `x-mq-date-time` value and the decoded signature.
    Mqv2 { date_time: &'a str, signature: &'a [u8] },
}

#[derive(Default, Serialize, Deserialize)]
struct Tables {
    /// Bumped by every change; a slave copies a master's tables when it differs.
    #[serde(default)]
    version: u64,
    #[serde(default)]
    users: BTreeMap<String, User>,
    #[serde(default)]
    acls: BTreeMap<String, Acl>,
    /// Each user's secret made ready for HMAC (see [`SigningKey`]), so a
    /// request does not set up the key again. Derived from `users` by
    /// [`Tables::changed`] after every change; never written to a file.
    #[serde(skip)]
    keys: HashMap<String, SigningKey>,
}

impl Tables {
    /// Call after any change: bumps the version and rebuilds the keys.
    /// Changes are rare (an admin's request, a reload); rebuilding them
    /// all keeps a changed or deleted password from ever lingering.
    fn changed(&mut self) {
        self.version += 1;
        self.rekey();
    }

    fn rekey(&mut self) {
        self.keys = self
            .users
            .values()
            .filter_map(|u| {
                u.password.as_deref().filter(|p| !p.is_empty()).map(|p| (u.username.clone(), SigningKey::new(p)))
            })
            .collect();
    }
}

/// Users and ACLs, shared by every request path of a server.
#[derive(Default)]
pub struct AuthStore {
    tables: RwLock<Tables>,
}

impl AuthStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tables as a file holds them, passwords included.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&*self.tables.read()).unwrap_or_default()
    }

    /// Replaces the tables with a file's (or a master's) copy; every entry
    /// is checked first, and nothing changes when one fails.
    pub fn load_json(&self, bytes: &[u8]) -> Result<(), AuthError> {
        let loaded: Tables = serde_json::from_slice(bytes).map_err(|e| AuthError::BadTables(e.to_string()))?;
        if loaded.users.len() > USERS_MAX || loaded.acls.len() > USERS_MAX {
            return Err(AuthError::BadTables(format!("more than {USERS_MAX} users or ACL subjects")));
        }
        for (name, u) in &loaded.users {
            u.validate()?;
            if name != &u.username {
                return Err(AuthError::BadTables(format!("user {} is filed under {name}", u.username)));
            }
        }
        for (subject, acl) in &loaded.acls {
            acl.validate()?;
            if subject != &acl.subject {
                return Err(AuthError::BadTables(format!("ACL of {} is filed under {subject}", acl.subject)));
            }
        }
        let mut loaded = loaded;
        loaded.rekey();
        *self.tables.write() = loaded;
        Ok(())
    }

    /// The tables' change counter.
    pub fn version(&self) -> u64 {
        self.tables.read().version
    }

    pub fn is_empty(&self) -> bool {
        self.tables.read().users.is_empty()
    }

    /// Checks that `proof` was made with `access_key`'s secret, and that the
    /// user may sign in.
    pub fn authenticate(&self, access_key: &str, proof: Proof<'_>) -> Result<Principal, AuthFailure> {
        let tables = self.tables.read();
        let user = tables
            .users
            .get(access_key)
            .ok_or_else(|| AuthFailure::UnknownUser { access_key: printable(access_key) })?;
        // A user without a password has no key and signs nothing.
        let good = match (proof, tables.keys.get(access_key)) {
            (_, None) => false,
            (Proof::Remoting { mut fields, body, request_version, signature }, Some(key)) => {
                key.verify_remoting(&mut fields, body, request_version, signature)
            }
            (Proof::Mqv2 { date_time, signature }, Some(key)) => key.verify_mqv2(date_time, signature),
        };
        if !good {
            return Err(AuthFailure::BadSignature { access_key: user.username.clone() });
        }
        // Checked after the signature, so an attacker cannot probe who is disabled.
        if user.user_status == UserStatus::Disable {
            return Err(AuthFailure::DisabledUser { access_key: user.username.clone() });
        }
        Ok(Principal { username: user.username.clone(), user_type: user.user_type })
    }

    /// Whether `who` may do what `needs` lists, from `source`. Super users
    /// may do anything; every need of a Normal user must be allowed.
    pub fn authorize(&self, who: &Principal, needs: &[Need<'_>], source: IpAddr) -> Result<(), AuthFailure> {
        if who.is_super() {
            return Ok(());
        }
        let tables = self.tables.read();
        let acl = with_user_subject(&who.username, |subject| tables.acls.get(subject));
        for need in needs {
            if let Err(refusal) = decide(acl, need, source) {
                let why = match refusal {
                    Refusal::NoMatch => "no matching policy".to_string(),
                    Refusal::DeniedBy(r) => format!("denied by the entry for {r}"),
                };
                return Err(AuthFailure::Denied {
                    user: who.username.clone(),
                    resource: format!("{:?}:{}", need.kind, need.name),
                    actions: need.actions.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join("|"),
                    source_ip: source.to_string(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Creates the first Super user when there is none
    /// (`initAuthenticationUser`); `Ok(false)` when users exist already.
    pub fn init_super_user(&self, username: &str, password: &str) -> Result<bool, AuthError> {
        Ok(!self.init_super_users(&[crate::Credentials::new(username, password)])?.is_empty())
    }

    /// Creates these Super users (`initAuthenticationUser`, and the inner
    /// credentials servers sign their own requests with) when the tables
    /// hold no user yet; returns the names created.
    pub fn init_super_users(&self, firsts: &[crate::Credentials]) -> Result<Vec<String>, AuthError> {
        let mut t = self.tables.write();
        if !t.users.is_empty() {
            return Ok(Vec::new());
        }
        let mut created = Vec::new();
        for c in firsts {
            let user = User {
                username: c.access_key.clone(),
                password: Some(c.secret_key.clone()),
                user_type: UserType::Super,
                user_status: UserStatus::Enable,
            };
            user.validate()?;
            if t.users.insert(user.username.clone(), user).is_none() {
                created.push(c.access_key.clone());
            }
        }
        t.changed();
        Ok(created)
    }

    /// Adds a user. Only a Super user may create another.
    pub fn create_user(&self, by: &Principal, user: User) -> Result<(), AuthError> {
        user.validate()?;
        if user.password.is_none() {
            return Err(AuthError::Invalid(format!("user {} needs a password", user.username)));
        }
        check_may_grant(by, &user)?;
        let mut t = self.tables.write();
        if t.users.contains_key(&user.username) {
            return Err(AuthError::UserExists(user.username));
        }
        if t.users.len() >= USERS_MAX {
            return Err(AuthError::Invalid(format!("at most {USERS_MAX} users")));
        }
        t.users.insert(user.username.clone(), user);
        t.changed();
        Ok(())
    }

    /// Changes a user's password, type or status; `None` keeps the value.
    pub fn update_user(&self, by: &Principal, update: UserUpdate) -> Result<(), AuthError> {
        validate_username(&update.username)?;
        let probe = User {
            username: update.username.clone(),
            password: update.password.clone(),
            user_type: update.user_type.unwrap_or_default(),
            user_status: update.user_status.unwrap_or_default(),
        };
        probe.validate()?;
        check_may_grant(by, &probe)?;
        let mut t = self.tables.write();
        let user = t.users.get_mut(&update.username).ok_or_else(|| AuthError::NoSuchUser(update.username.clone()))?;
        if let Some(p) = update.password {
            user.password = Some(p);
        }
        if let Some(ty) = update.user_type {
            user.user_type = ty;
        }
        if let Some(st) = update.user_status {
            user.user_status = st;
        }
        t.changed();
        Ok(())
    }

    /// Deletes a user and its ACL. A user cannot delete itself, so the last
    /// Super user is never locked out by its own hand.
    pub fn delete_user(&self, by: &Principal, username: &str) -> Result<(), AuthError> {
        validate_username(username)?;
        if by.username == username {
            return Err(AuthError::NotAllowed(format!("user {username} cannot delete itself")));
        }
        let mut t = self.tables.write();
        t.users.remove(username).ok_or_else(|| AuthError::NoSuchUser(username.to_string()))?;
        t.acls.remove(&user_subject(username));
        t.changed();
        Ok(())
    }

    /// A user without its password.
    pub fn get_user(&self, username: &str) -> Result<User, AuthError> {
        let t = self.tables.read();
        t.users.get(username).map(User::public).ok_or_else(|| AuthError::NoSuchUser(username.to_string()))
    }

    /// Users whose name contains `filter`, without passwords.
    pub fn list_users(&self, filter: Option<&str>) -> Vec<User> {
        let t = self.tables.read();
        t.users.values().filter(|u| filter.is_none_or(|f| u.username.contains(f))).map(User::public).collect()
    }

    /// Creates or extends a subject's ACL (entries for the same resource
    /// are replaced). `create` refuses a subject that has one already.
    pub fn put_acl(&self, acl: Acl, create: bool) -> Result<(), AuthError> {
        acl.validate()?;
        let mut t = self.tables.write();
        let username = acl.username()?.to_string();
        if !t.users.contains_key(&username) {
            return Err(AuthError::NoSuchUser(username));
        }
        match t.acls.get_mut(&acl.subject) {
            Some(_) if create => return Err(AuthError::Invalid(format!("{} already has an ACL", acl.subject))),
            Some(existing) => {
                let mut merged = existing.clone();
                merged.merge(acl);
                merged.validate()?;
                *existing = merged;
            }
            None => {
                if t.acls.len() >= USERS_MAX {
                    return Err(AuthError::Invalid(format!("at most {USERS_MAX} ACL subjects")));
                }
                t.acls.insert(acl.subject.clone(), acl);
            }
        }
        t.changed();
        Ok(())
    }

    /// Deletes a subject's ACL, or only its entries for `resource`.
    pub fn delete_acl(&self, subject: &str, resource: Option<&crate::model::Resource>) -> Result<(), AuthError> {
        subject_username(subject)?;
        let mut t = self.tables.write();
        match resource {
            None => {
                t.acls.remove(subject).ok_or_else(|| AuthError::NoSuchAcl(subject.to_string()))?;
            }
            Some(r) => {
                let acl = t.acls.get_mut(subject).ok_or_else(|| AuthError::NoSuchAcl(subject.to_string()))?;
                for p in &mut acl.policies {
                    p.entries.retain(|e| &e.resource != r);
                }
                acl.policies.retain(|p| !p.entries.is_empty());
            }
        }
        t.changed();
        Ok(())
    }

    pub fn get_acl(&self, subject: &str) -> Result<Acl, AuthError> {
        self.tables.read().acls.get(subject).cloned().ok_or_else(|| AuthError::NoSuchAcl(subject.to_string()))
    }

    /// ACLs whose subject contains `subject_filter` and that have an entry
    /// whose resource contains `resource_filter`.
    pub fn list_acls(&self, subject_filter: Option<&str>, resource_filter: Option<&str>) -> Vec<Acl> {
        let t = self.tables.read();
        t.acls
            .values()
            .filter(|a| subject_filter.is_none_or(|f| a.subject.contains(f)))
            .filter(|a| {
                resource_filter.is_none_or(|f| {
                    a.policies.iter().flat_map(|p| &p.entries).any(|e| e.resource.to_string().contains(f))
                })
            })
            .cloned()
            .collect()
    }

    /// The tables sealed for a Super user: a slave holding that user's
    /// secret opens them with [`AuthStore::load_sealed`]; nobody else can
    /// read the passwords inside.
    pub fn seal_for(&self, secret: &str) -> Vec<u8> {
        crate::seal::seal(secret, &self.to_json())
    }

    /// Replaces the tables with a sealed copy from a master.
    pub fn load_sealed(&self, secret: &str, sealed: &[u8]) -> Result<(), AuthError> {
        let plain = crate::seal::open(secret, sealed).ok_or(AuthError::Unsealable)?;
        self.load_json(&plain)
    }

    /// The secret of a user, for sealing its copy of the tables.
    pub fn secret_of(&self, username: &str) -> Option<String> {
        self.tables.read().users.get(username).and_then(|u| u.password.clone())
    }
}

/// Only a Super user creates or updates users, and so only a Super user
/// makes another Super user.
fn check_may_grant(by: &Principal, _target: &User) -> Result<(), AuthError> {
    if by.is_super() {
        Ok(())
    } else {
        Err(AuthError::NotAllowed(format!("User:{} is not a Super user", by.username)))
    }
}

/// An access key as it may appear in a remark or a log line.
fn printable(access_key: &str) -> String {
    access_key.chars().take(64).filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, ResourceType};
    use crate::sign::{remoting_signature, ACCESS_KEY};

    fn root() -> Principal {
        Principal { username: "root".into(), user_type: UserType::Super }
    }

    fn store() -> AuthStore {
        let s = AuthStore::new();
        assert!(s.init_super_user("root", "rootsecret").unwrap());
        assert!(!s.init_super_user("other", "othersecret").unwrap());
        let alice: User = serde_json::from_str(r#"{"username":"alice","password":"alicesecret"}"#).unwrap();
        s.create_user(&root(), alice).unwrap();
        s
    }

    fn signed(s: &AuthStore, ak: &str, secret: &str) -> Result<Principal, AuthFailure> {
        let fields = [(ACCESS_KEY, ak), ("topic", "T")];
        let sig = remoting_signature(secret, fields, b"b");
        s.authenticate(ak, Proof::Remoting { fields: fields.to_vec(), body: b"b", request_version: 0, signature: &sig })
    }

    #[test]
    fn authentication_names_what_failed_and_never_the_secret() {
        let s = store();
        assert_eq!(signed(&s, "alice", "alicesecret").unwrap().username, "alice");
        let bad = signed(&s, "alice", "wrongsecret").unwrap_err();
        assert_eq!(bad.reason(), "bad_signature");
        assert!(bad.to_string().contains("alice") && !bad.to_string().contains("alicesecret"));
        assert_eq!(signed(&s, "mallory", "x").unwrap_err().reason(), "unknown_user");
        let disabled: UserUpdate = serde_json::from_str(r#"{"username":"alice","userStatus":"disable"}"#).unwrap();
        s.update_user(&root(), disabled).unwrap();
        assert_eq!(signed(&s, "alice", "alicesecret").unwrap_err().reason(), "disabled_user");
        // The password survived an update that did not name one.
        assert_eq!(s.secret_of("alice").as_deref(), Some("alicesecret"));
    }

    #[test]
    fn a_changed_or_reloaded_password_takes_effect_at_once() {
        let s = store();
        // The old password works until it is changed.
        assert!(signed(&s, "alice", "alicesecret").is_ok());
        let changed: UserUpdate = serde_json::from_str(r#"{"username":"alice","password":"newsecret"}"#).unwrap();
        s.update_user(&root(), changed).unwrap();
        assert_eq!(signed(&s, "alice", "alicesecret").unwrap_err().reason(), "bad_signature");
        assert!(signed(&s, "alice", "newsecret").is_ok());
        // Tables replaced wholesale (a reload, a master's copy): the same.
        s.load_json(br#"{"users":{"alice":{"username":"alice","password":"filesecret"}}}"#).unwrap();
        assert_eq!(signed(&s, "alice", "newsecret").unwrap_err().reason(), "bad_signature");
        assert!(signed(&s, "alice", "filesecret").is_ok());
    }

    #[test]
    fn the_longest_user_name_is_authorized_like_a_short_one() {
        let s = store();
        let long = "u".repeat(crate::model::USERNAME_MAX_LEN);
        let user: User = serde_json::from_str(&format!(r#"{{"username":"{long}","password":"longsecret"}}"#)).unwrap();
        s.create_user(&root(), user).unwrap();
        let acl = format!(
            r#"{{"subject":"User:{long}","policies":[{{"entries":[{{"resource":"Topic:T","actions":["Pub"]}}]}}]}}"#
        );
        s.put_acl(serde_json::from_str(&acl).unwrap(), true).unwrap();
        let who = signed(&s, &long, "longsecret").unwrap();
        let pubs = [Need { kind: ResourceType::Topic, name: "T", actions: &[Action::Pub] }];
        assert!(s.authorize(&who, &pubs, "10.0.0.1".parse().unwrap()).is_ok());
        let subs = [Need { kind: ResourceType::Topic, name: "T", actions: &[Action::Sub] }];
        assert!(s.authorize(&who, &subs, "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn normal_users_cannot_administer_users_and_reads_hide_passwords() {
        let s = store();
        let alice = Principal { username: "alice".into(), user_type: UserType::Normal };
        let su: User = serde_json::from_str(r#"{"username":"eve","password":"evesecret","userType":"Super"}"#).unwrap();
        assert!(s.create_user(&alice, su.clone()).is_err());
        s.create_user(&root(), su).unwrap();
        assert!(s.get_user("eve").unwrap().password.is_none());
        assert!(s.list_users(None).iter().all(|u| u.password.is_none()));
        assert!(s.delete_user(&root(), "root").is_err());
        s.delete_user(&root(), "eve").unwrap();
    }

    #[test]
    fn acls_grant_and_tables_round_trip_through_json_and_a_seal() {
        let s = store();
        let acl: Acl = serde_json::from_str(
            r#"{"subject":"User:alice","policies":[{"entries":[{"resource":"Topic:T","actions":["Pub"]}]}]}"#,
        )
        .unwrap();
        s.put_acl(acl, true).unwrap();
        let alice = Principal { username: "alice".into(), user_type: UserType::Normal };
        let ip = "127.0.0.1".parse().unwrap();
        let pubs = [Need { kind: ResourceType::Topic, name: "T", actions: &[Action::Pub] }];
        let subs = [Need { kind: ResourceType::Topic, name: "T", actions: &[Action::Sub] }];
        assert!(s.authorize(&alice, &pubs, ip).is_ok());
        let denied = s.authorize(&alice, &subs, ip).unwrap_err();
        assert!(denied.to_string().contains("User:alice") && denied.to_string().contains("Topic:T"), "{denied}");

        let copy = AuthStore::new();
        copy.load_json(&s.to_json()).unwrap();
        assert!(copy.authorize(&alice, &pubs, ip).is_ok());
        let sealed = s.seal_for("rootsecret");
        assert!(!String::from_utf8_lossy(&sealed).contains("alicesecret"));
        let slave = AuthStore::new();
        assert_eq!(slave.load_sealed("wrong", &sealed), Err(AuthError::Unsealable));
        slave.load_sealed("rootsecret", &sealed).unwrap();
        assert_eq!(signed(&slave, "alice", "alicesecret").unwrap().username, "alice");
        assert_eq!(slave.version(), s.version());
    }

    #[test]
    fn a_bad_table_file_changes_nothing() {
        let s = store();
        let before = s.to_json();
        assert!(s.load_json(br#"{"users":{"x":{"username":"y","password":"passwordy"}}}"#).is_err());
        assert!(s.load_json(br#"{"users":{"../x":{"username":"../x","password":"password"}}}"#).is_err());
        assert!(s.load_json(b"not json").is_err());
        assert_eq!(s.to_json(), before);
    }
}
