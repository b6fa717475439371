//! RocketMQ's request signatures on remoting commands: a client signs every
//! request it sends with its [`Credentials`]; a server turns a received
//! command into an access key and a [`Proof`] for `spate-auth`.

use spate_auth::sign::{SigningKey, ACCESS_KEY, SIGNATURE};
use spate_auth::{AuthFailure, AuthStore, Credentials, Principal, Proof};

use crate::command::RemotingCommand;

/// One side's credentials made ready to sign many requests: the secret's
/// HMAC pads are hashed once, not per request.
#[derive(Clone, Debug)]
pub struct Signer {
    access_key: String,
    key: SigningKey,
}

impl Signer {
    pub fn new(credentials: &Credentials) -> Self {
        Signer { access_key: credentials.access_key.clone(), key: SigningKey::new(&credentials.secret_key) }
    }

    /// Adds `AccessKey` and `Signature` to a request, signing every header
    /// field it carries and its body (RocketMQ's `AclClientRPCHook`).
    pub fn sign(&self, cmd: &mut RemotingCommand) {
        cmd.ext_fields.remove(SIGNATURE);
        cmd.ext_fields.insert(ACCESS_KEY.to_string(), self.access_key.clone());
        let signature =
            self.key.remoting_signature(cmd.ext_fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), &cmd.body);
        cmd.ext_fields.insert(SIGNATURE.to_string(), signature);
    }
}

/// [`Signer::sign`] with credentials used once.
pub fn sign(cmd: &mut RemotingCommand, credentials: &Credentials) {
    Signer::new(credentials).sign(cmd)
}

/// Checks a received request's signature against `users`. Every header
/// field received is part of the signed content, unknown ones included.
pub fn authenticate(users: &AuthStore, cmd: &RemotingCommand) -> Result<Principal, AuthFailure> {
    let access_key = cmd.field(ACCESS_KEY).ok_or(AuthFailure::MissingAccessKey { code: cmd.code })?;
    let signature = cmd
        .field(SIGNATURE)
        .ok_or_else(|| AuthFailure::MissingSignature { access_key: access_key.chars().take(64).collect() })?;
    let fields: Vec<(&str, &str)> = cmd.ext_fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    users.authenticate(access_key, Proof::Remoting { fields, body: &cmd.body, request_version: cmd.version, signature })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::request;
    use spate_auth::sign::remoting_signature;

    #[test]
    fn a_signed_command_authenticates_after_a_trip_over_the_wire() {
        let users = AuthStore::new();
        users.init_super_user("root", "rootsecret").unwrap();
        let mut cmd = RemotingCommand::request(request::SEND_MESSAGE).with("topic", "T").with_body(&b"hello"[..]);
        sign(&mut cmd, &Credentials::new("root", "rootsecret"));
        let frame = cmd.to_bytes();
        let back = RemotingCommand::decode(frame.slice(4..)).unwrap().unwrap();
        assert_eq!(authenticate(&users, &back).unwrap().username, "root");

        let mut tampered = back.clone();
        tampered.ext_fields.insert("topic".into(), "U".into());
        assert_eq!(authenticate(&users, &tampered).unwrap_err().reason(), "bad_signature");
        let mut extra = back.clone();
        extra.ext_fields.insert("OnsChannel".into(), "ALIYUN".into());
        assert_eq!(authenticate(&users, &extra).unwrap_err().reason(), "bad_signature");
        let anonymous = RemotingCommand::request(request::SEND_MESSAGE);
        assert_eq!(authenticate(&users, &anonymous).unwrap_err().reason(), "missing_access_key");
    }

    #[test]
    fn json_numbers_and_booleans_are_verified_as_the_strings_a_client_signed() {
        // ali-ons sends queueId as a JSON number and batch as a boolean and
        // signs their toString(): "3" and "false".
        let users = AuthStore::new();
        users.init_super_user("onsuser", "onssecret").unwrap();
        let fields = [("AccessKey", "onsuser"), ("OnsChannel", "ALIYUN"), ("queueId", "3"), ("batch", "false")];
        let sig = remoting_signature("onssecret", fields, b"");
        let header = format!(
            r#"{{"code":10,"language":"JAVA","opaque":1,"flag":0,"extFields":{{"AccessKey":"onsuser","OnsChannel":"ALIYUN","queueId":3,"batch":false,"Signature":"{sig}"}}}}"#
        );
        let mut frame = bytes::BytesMut::new();
        bytes::BufMut::put_i32(&mut frame, header.len() as i32);
        bytes::BufMut::put_slice(&mut frame, header.as_bytes());
        let cmd = RemotingCommand::decode(frame.freeze()).unwrap().unwrap();
        assert_eq!(authenticate(&users, &cmd).unwrap().username, "onsuser");
    }
}
