//! `dev --auth`: client authentication for a local cluster. Each start
//! writes a new tokens file with one admin token (`tokens.toml` under the
//! data directory) and the token itself to `admin.token` beside it (mode
//! 0600), and points every node's `http.tokens_file` at the file, so the
//! local cluster asks for tokens as a production one does.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::config::ServerConfig;
use crate::token_cmd;
use crate::tokens::Scope;

/// Name of the admin token `dev --auth` makes.
pub const ADMIN_TOKEN_NAME: &str = "dev-admin";

/// Where `dev --auth` keeps its tokens file and the admin token.
#[derive(Debug, Clone)]
pub struct DevTokens {
    /// The tokens file every node reads.
    pub tokens_file: PathBuf,
    /// The admin token, for `--token-file`.
    pub admin_token: PathBuf,
}

impl DevTokens {
    /// A new tokens file under `data_dir` holding one admin token, written
    /// to `admin.token` (mode 0600); an earlier file is replaced.
    ///
    /// # Errors
    /// The files cannot be written, naming them.
    pub fn create(data_dir: &Path) -> anyhow::Result<DevTokens> {
        let data_dir = std::path::absolute(data_dir).context("resolve the data directory")?;
        let tokens_file = data_dir.join("tokens.toml");
        let admin_token = data_dir.join("admin.token");
        match std::fs::remove_file(&tokens_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", tokens_file.display())),
        }
        let created =
            token_cmd::create(&tokens_file, ADMIN_TOKEN_NAME, &[Scope::Admin], None, SystemTime::now())?;
        token_cmd::write_atomically(&admin_token, format!("{}\n", created.token.expose()).as_bytes())
            .with_context(|| format!("cannot write {}", admin_token.display()))?;
        Ok(DevTokens { tokens_file, admin_token })
    }

    /// Points `config`'s node at the tokens file.
    pub fn require(&self, config: &mut ServerConfig) {
        config.http.tokens_file = Some(self.tokens_file.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Tokens;

    #[test]
    fn the_admin_token_written_is_the_one_the_file_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevTokens::create(dir.path()).unwrap();
        let again = DevTokens::create(dir.path()).unwrap();
        let token = std::fs::read_to_string(&again.admin_token).unwrap();
        let tokens = Tokens::load(&again.tokens_file).unwrap();
        assert_eq!(tokens.len(), 1, "a restart replaces the file rather than adding to it");
        let entry = tokens.lookup(token.trim()).expect("the written token is accepted");
        assert!(entry.grants(Scope::Admin));
        assert_eq!(first.tokens_file, again.tokens_file);
        let mut config = ServerConfig::default();
        again.require(&mut config);
        assert_eq!(config.http.tokens_path(), Some(again.tokens_file.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&again.admin_token).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
