//! `--access-key` / `--secret-key` / `--credentials-file`, shared by
//! `spate admin` and `spate bench`: what the tools sign their requests with
//! when the servers run with `authenticationEnabled=true`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use spate_remoting::Credentials;

#[derive(Args, Clone, Default)]
pub struct CredentialArgs {
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
}

impl std::fmt::Debug for CredentialArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialArgs")
            .field("access_key", &self.access_key)
            .field("credentials_file", &self.credentials_file)
            .finish_non_exhaustive()
    }
}

impl CredentialArgs {
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

    /// A remoting client configuration that signs with these credentials.
    pub fn client_config(&self) -> Result<spate_remoting::ClientConfig> {
        let mut c = spate_remoting::ClientConfig::default();
        c.connection.credentials = self.credentials()?;
        Ok(c)
    }
}
