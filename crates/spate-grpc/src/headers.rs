//! The metadata every MessagingService call carries. Only `x-mq-client-id`
//! is required, as upstream's servers require; every other header is
//! optional and any `x-mq-language` is accepted (the Node.js client sends
//! `HTTP`). Values are bounded, so a peer cannot make the server keep
//! arbitrary amounts of text per client.

use tonic::metadata::MetadataMap;

/// `x-mq-client-id`: the client instance (host@pid@index@time).
pub const CLIENT_ID: &str = "x-mq-client-id";
/// `x-mq-language`: JAVA, GO, CPP, DOTNET, PYTHON, RUST, HTTP (Node.js), ...
pub const LANGUAGE: &str = "x-mq-language";
/// `x-mq-client-version`.
pub const CLIENT_VERSION: &str = "x-mq-client-version";
/// `x-mq-namespace` (Java and Python send it, possibly empty).
pub const NAMESPACE: &str = "x-mq-namespace";
/// `x-mq-date-time`: what the `authorization` signature covers.
pub const DATE_TIME: &str = "x-mq-date-time";
/// `authorization`: `MQv2-HMAC-SHA1 Credential=AK, SignedHeaders=x-mq-date-time, Signature=hex`.
pub const AUTHORIZATION: &str = "authorization";

/// Longest value kept of any of these headers.
pub const MAX_VALUE_LEN: usize = 256;

/// Why a call's metadata was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the x-mq-client-id header is required")]
    ClientIdRequired,
    #[error("header {name} is not visible ASCII of at most {max} characters")]
    Invalid { name: &'static str, max: usize },
}

/// What a call says about its client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHeaders {
    pub client_id: String,
    pub language: String,
    pub version: String,
    pub namespace: String,
}

impl ClientHeaders {
    /// Reads a call's metadata: the client id must be there, the others
    /// default to empty.
    pub fn from_metadata(md: &MetadataMap) -> Result<ClientHeaders, HeaderError> {
        let client_id = value(md, CLIENT_ID)?.ok_or(HeaderError::ClientIdRequired)?;
        if client_id.is_empty() {
            return Err(HeaderError::ClientIdRequired);
        }
        Ok(ClientHeaders {
            client_id,
            language: value(md, LANGUAGE)?.unwrap_or_default(),
            version: value(md, CLIENT_VERSION)?.unwrap_or_default(),
            namespace: value(md, NAMESPACE)?.unwrap_or_default(),
        })
    }
}

/// A header's value if present; refused if it is not visible ASCII (or
/// space) or is longer than [`MAX_VALUE_LEN`].
fn value(md: &MetadataMap, name: &'static str) -> Result<Option<String>, HeaderError> {
    let Some(v) = md.get(name) else { return Ok(None) };
    let bad = HeaderError::Invalid { name, max: MAX_VALUE_LEN };
    let s = v.to_str().map_err(|_| bad.clone())?;
    if s.len() > MAX_VALUE_LEN || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(bad);
    }
    Ok(Some(s.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn only_the_client_id_is_required_and_any_language_goes() {
        let h = ClientHeaders::from_metadata(&md(&[(CLIENT_ID, "host@1@0@abc"), (LANGUAGE, "HTTP")])).unwrap();
        assert_eq!((h.client_id.as_str(), h.language.as_str(), h.version.as_str()), ("host@1@0@abc", "HTTP", ""));
        assert_eq!(ClientHeaders::from_metadata(&md(&[(LANGUAGE, "JAVA")])), Err(HeaderError::ClientIdRequired));
        assert_eq!(ClientHeaders::from_metadata(&md(&[(CLIENT_ID, " ")])), Err(HeaderError::ClientIdRequired));
    }

    #[test]
    fn long_values_are_refused() {
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(
            ClientHeaders::from_metadata(&md(&[(CLIENT_ID, &long)])),
            Err(HeaderError::Invalid { name: CLIENT_ID, max: MAX_VALUE_LEN })
        );
        let h = ClientHeaders::from_metadata(&md(&[(CLIENT_ID, "c"), (NAMESPACE, "")])).unwrap();
        assert_eq!(h.namespace, "");
    }
}
