//! RocketMQ's user and ACL administration codes (3001-3010) over a
//! [`spate_auth::AuthStore`], shared by broker and name server. Read
//! answers never carry a password; a change is reported so the caller can
//! persist the tables.

use spate_auth::model::user_subject;
use spate_auth::{Acl, AuthError, AuthStore, Principal, Resource, User, UserType, UserUpdate};

use crate::access::code::*;
use crate::code::response;
use crate::command::RemotingCommand;
use crate::protocol::json;

/// What an administration request did.
pub struct Handled {
    pub response: RemotingCommand,
    /// The tables changed: persist them.
    pub changed: bool,
}

/// Whether `code` is one [`handle`] answers.
pub fn is_auth_admin(code: i32) -> bool {
    (AUTH_CREATE_USER..=AUTH_LIST_ACL).contains(&code)
}

/// Answers one of codes 3001-3010. `by` is the signed-in user. With
/// authentication off there is none, and the request acts as a Super user
/// (how the first users are made before it is turned on); with it on, an
/// unsigned request (a whitelisted code) changes and reads nothing.
pub fn handle(
    users: &AuthStore,
    by: Option<&Principal>,
    authentication_enabled: bool,
    req: &RemotingCommand,
) -> Handled {
    let anonymous = Principal { username: "anonymous".into(), user_type: UserType::Super };
    let by = match by {
        Some(p) => p,
        None if !authentication_enabled => &anonymous,
        None => {
            return Handled {
                response: RemotingCommand::error(
                    req,
                    response::NO_PERMISSION,
                    format!("request code {} needs a signed-in user, even when whitelisted", req.code),
                ),
                changed: false,
            }
        }
    };
    let ok = |changed| Handled { response: RemotingCommand::success(req), changed };
    let result: Result<Handled, AuthError> = (|| match req.code {
        AUTH_CREATE_USER => {
            let user: User = body(req, "UserInfo")?;
            same_name(req, &user.username)?;
            users.create_user(by, user)?;
            Ok(ok(true))
        }
        AUTH_UPDATE_USER => {
            let update: UserUpdate = body(req, "UserInfo")?;
            same_name(req, &update.username)?;
            users.update_user(by, update)?;
            Ok(ok(true))
        }
        AUTH_DELETE_USER => {
            users.delete_user(by, header(req, "username")?)?;
            Ok(ok(true))
        }
        AUTH_GET_USER => {
            let user = users.get_user(header(req, "username")?)?;
            Ok(Handled { response: RemotingCommand::success(req).with_body(to_json(&user)), changed: false })
        }
        AUTH_LIST_USER => {
            let list = users.list_users(req.field("filter").filter(|f| !f.is_empty()));
            Ok(Handled { response: RemotingCommand::success(req).with_body(to_json(&list)), changed: false })
        }
        AUTH_CREATE_ACL | AUTH_UPDATE_ACL => {
            let acl: Acl = body(req, "AclInfo")?;
            if let Some(subject) = req.field("subject").filter(|s| *s != acl.subject) {
                return Err(AuthError::Invalid(format!("header names {subject}, body {}", acl.subject)));
            }
            users.put_acl(acl, req.code == AUTH_CREATE_ACL)?;
            Ok(ok(true))
        }
        AUTH_DELETE_ACL => {
            let resource = match req.field("resource").filter(|r| !r.is_empty()) {
                Some(r) => Some(r.parse::<Resource>()?),
                None => None,
            };
            users.delete_acl(header(req, "subject")?, resource.as_ref())?;
            Ok(ok(true))
        }
        AUTH_GET_ACL => {
            let acl = users.get_acl(header(req, "subject")?)?;
            Ok(Handled { response: RemotingCommand::success(req).with_body(to_json(&acl)), changed: false })
        }
        AUTH_LIST_ACL => {
            let list = users.list_acls(
                req.field("subjectFilter").filter(|f| !f.is_empty()),
                req.field("resourceFilter").filter(|f| !f.is_empty()),
            );
            Ok(Handled { response: RemotingCommand::success(req).with_body(to_json(&list)), changed: false })
        }
        code => Err(AuthError::Invalid(format!("request code {code} is not a user or ACL request"))),
    })();
    result.unwrap_or_else(|e| Handled { response: error_response(req, &e), changed: false })
}

/// SPATE_GET_AUTH_SNAPSHOT: the tables sealed with the asking Super user's
/// secret, for a slave that signs in with the same inner credentials.
pub fn snapshot(users: &AuthStore, by: Option<&Principal>, req: &RemotingCommand) -> RemotingCommand {
    let Some(secret) = by.filter(|p| p.is_super()).and_then(|p| users.secret_of(&p.username)) else {
        return RemotingCommand::error(
            req,
            response::NO_PERMISSION,
            "the auth snapshot is sealed for a signed-in Super user; authentication is off or the user is not one",
        );
    };
    RemotingCommand::success(req).with_body(users.seal_for(&secret)).with("version", users.version())
}

fn error_response(req: &RemotingCommand, e: &AuthError) -> RemotingCommand {
    let code = match e {
        AuthError::NotAllowed(_) => response::NO_PERMISSION,
        _ => response::INVALID_PARAMETER,
    };
    RemotingCommand::error(req, code, e.to_string())
}

fn same_name(req: &RemotingCommand, body_name: &str) -> Result<(), AuthError> {
    match req.field("username") {
        Some(name) if name != body_name => {
            Err(AuthError::Invalid(format!("header names user {name}, body user {body_name}")))
        }
        _ => Ok(()),
    }
}

fn header<'a>(req: &'a RemotingCommand, key: &str) -> Result<&'a str, AuthError> {
    req.field(key).ok_or_else(|| AuthError::Invalid(format!("request code {} needs header field {key}", req.code)))
}

fn body<T: serde::de::DeserializeOwned>(req: &RemotingCommand, what: &'static str) -> Result<T, AuthError> {
    json::decode(&req.body, what).map_err(|e| AuthError::Invalid(e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A request creating `user` (for clients of this protocol: admin, tests).
pub fn create_user_request(user: &User) -> RemotingCommand {
    RemotingCommand::request(AUTH_CREATE_USER).with("username", &user.username).with_body(to_json(user))
}

/// A request changing a user.
pub fn update_user_request(update: &serde_json::Value, username: &str) -> RemotingCommand {
    RemotingCommand::request(AUTH_UPDATE_USER).with("username", username).with_body(to_json(update))
}

/// A request creating or extending `acl`.
pub fn put_acl_request(acl: &Acl, create: bool) -> RemotingCommand {
    RemotingCommand::request(if create { AUTH_CREATE_ACL } else { AUTH_UPDATE_ACL })
        .with("subject", &acl.subject)
        .with_body(to_json(acl))
}

/// The subject string of a user name, re-exported for callers of this protocol.
pub fn subject_of(username: &str) -> String {
    user_subject(username)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_created_listed_without_passwords_and_refused_to_normal_users() {
        let store = AuthStore::new();
        let user: User = serde_json::from_str(r#"{"username":"alice","password":"alicesecret"}"#).unwrap();
        let h = handle(&store, None, false, &create_user_request(&user));
        assert_eq!(h.response.code, response::SUCCESS, "{:?}", h.response.remark);
        assert!(h.changed);
        let list = handle(&store, None, false, &RemotingCommand::request(AUTH_LIST_USER));
        let text = String::from_utf8_lossy(&list.response.body).to_string();
        assert!(text.contains("alice") && !text.contains("alicesecret"), "{text}");
        let again = handle(&store, None, false, &create_user_request(&user));
        assert_eq!(again.response.code, response::INVALID_PARAMETER);
        assert!(!again.changed);
        let alice = Principal { username: "alice".into(), user_type: UserType::Normal };
        let bob: User =
            serde_json::from_str(r#"{"username":"bob","password":"bobsecret","userType":"Super"}"#).unwrap();
        assert_eq!(
            handle(&store, Some(&alice), false, &create_user_request(&bob)).response.code,
            response::NO_PERMISSION
        );
        let get = RemotingCommand::request(AUTH_GET_USER).with("username", "nobody");
        assert_eq!(handle(&store, None, false, &get).response.code, response::INVALID_PARAMETER);
        // Whitelisted but unsigned while authentication is on: nothing.
        let list = RemotingCommand::request(AUTH_LIST_USER);
        assert_eq!(handle(&store, None, true, &list).response.code, response::NO_PERMISSION);
    }

    #[test]
    fn the_snapshot_is_only_for_a_signed_in_super_user() {
        let store = AuthStore::new();
        store.init_super_user("root", "rootsecret").unwrap();
        let req = RemotingCommand::request(SPATE_GET_AUTH_SNAPSHOT);
        assert_eq!(snapshot(&store, None, &req).code, response::NO_PERMISSION);
        let root = Principal { username: "root".into(), user_type: UserType::Super };
        let answer = snapshot(&store, Some(&root), &req);
        let copy = AuthStore::new();
        copy.load_sealed("rootsecret", &answer.body).unwrap();
        assert_eq!(copy.version(), store.version());
    }
}
