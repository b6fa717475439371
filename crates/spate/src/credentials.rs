//! How the tools reach secured servers, shared by `spate admin`, `spate
//! bench` and `spate controller`: `--access-key` / `--secret-key` /
//! `--credentials-file` (what requests are signed with when the servers run
//! with `authenticationEnabled=true`) and `--tls` / `--tls-trust-cert`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use spate_remoting::{Credentials, SerializeType};

#[derive(Args, Clone, Default)]
pub struct SecurityArgs {
    /// Access key (user name) to sign requests with.
    #[arg(long = "access-key", global = true, env = "SPATE_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// Secret key (password) to sign requests with. Prefer
    /// `--credentials-file` or SPATE_SECRET_KEY: a flag shows in `ps`.
    #[arg(long = "secret-key", global = true, env = "SPATE_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// A `tools.yml`-style file with `accessKey:` and `secretKey:` lines.
    #[arg(long = "credentials-file", global = true)]
    pub credentials_file: Option<PathBuf>,
    /// Connect with TLS (servers with `tlsMode=permissive|enforcing`).
    #[arg(long, global = true)]
    pub tls: bool,
    /// With `--tls`: verify the server's certificate against these CA
    /// certificates (PEM). Without it any certificate is accepted: the
    /// traffic is encrypted, but the server is not authenticated.
    #[arg(long = "tls-trust-cert", global = true)]
    pub tls_trust_cert: Option<PathBuf>,
    /// Header encoding of the requests sent (`rocketmq.serialize.type`):
    /// `json`, upstream clients' default and ours, or `rocketmq` (binary,
    /// cheaper for both sides to read and write). `admin` and `bench`
    /// only: the controller's own requests stay JSON.
    #[arg(long = "serialize-type", global = true, value_parser = parse_serialize_type)]
    pub serialize_type: Option<SerializeType>,
}

fn parse_serialize_type(s: &str) -> Result<SerializeType> {
    match s.to_ascii_uppercase().as_str() {
        "JSON" => Ok(SerializeType::Json),
        "ROCKETMQ" => Ok(SerializeType::RocketMq),
        _ => bail!("`{s}`: expected json or rocketmq"),
    }
}

impl std::fmt::Debug for SecurityArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityArgs")
            .field("access_key", &self.access_key)
            .field("credentials_file", &self.credentials_file)
            .field("tls", &self.tls)
            .field("serialize_type", &self.serialize_type)
            .finish_non_exhaustive()
    }
}

impl SecurityArgs {
    /// The credentials given, if any; half a pair is an error.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        if let Some(path) = &self.credentials_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            return Ok(Some(Credentials::from_tools_yml(&text).with_context(|| path.display().to_string())?));
        }
        match (&self.access_key, &self.secret_key) {
            (Some(a), Some(s)) => Ok(Some(Credentials::new(a.clone(), s.clone()))),
            (None, None) => Ok(None),
            _ => bail!("--access-key and --secret-key go together"),
        }
    }

    /// The TLS configuration `--tls` asks for, if any.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<spate_remoting::rustls::ClientConfig>>> {
        if !self.tls {
            return Ok(None);
        }
        let settings = spate_remoting::TlsClientSettings {
            enable: true,
            auth_server: self.tls_trust_cert.is_some(),
            trust_cert_path: self.tls_trust_cert.clone(),
            ..Default::default()
        };
        Ok(Some(settings.client_config().context("--tls")?))
    }

    /// A remoting client configuration that signs with these credentials,
    /// speaks TLS when asked, and encodes headers as asked.
    pub fn client_config(&self) -> Result<spate_remoting::ClientConfig> {
        let mut c = spate_remoting::ClientConfig::default();
        c.connection.credentials = self.credentials()?;
        if let Some(t) = self.serialize_type {
            c.connection.serialize_type = t;
        }
        c.tls = self.tls()?;
        Ok(c)
    }
}
