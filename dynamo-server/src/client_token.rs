//! How the client commands (`get`, `put`, `delete`, `status`, `cluster`,
//! `aae`, `bench`) reach a secured node: the bearer token they send to a
//! node that requires one (`http.tokens_file`), and the CA they verify an
//! `https://` node's certificate against (`http.tls`).
//!
//! It comes from `--token-file PATH` (the file's contents, trimmed) or
//! else the `DYNAMO_TOKEN` environment variable. There is deliberately no
//! `--token VALUE` flag: a secret on the command line is visible to every
//! user of the machine in `ps` and lands in shell histories. The token is
//! held in a [`ClientToken`], whose `Debug` prints `<redacted>`, and sent
//! in a header value marked sensitive; no error message contains it.

use std::fmt;
use std::path::PathBuf;

use anyhow::Context as _;
use reqwest::header::HeaderValue;

/// The environment variable holding the token when `--token-file` is not given.
pub const TOKEN_VARIABLE: &str = "DYNAMO_TOKEN";

/// The flags every client command shares (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// File holding the bearer token to send (its contents, trimmed);
    /// without it, the DYNAMO_TOKEN environment variable. Needed when the
    /// node has http.tokens_file set.
    #[arg(long, value_name = "PATH", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that an https:// node's certificate must chain
    /// to; needed for https:// URLs (the system's roots are not used).
    #[arg(long, value_name = "PATH", global = true, env = "DYNAMO_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// A client of the node at `url` with this token and CA.
    ///
    /// # Errors
    /// The token cannot be read ([`resolve`](Self::resolve)), or the CA
    /// file cannot be read, or an `https://` URL without one.
    pub fn client(&self, url: &str) -> anyhow::Result<crate::client::ApiClient> {
        crate::client::ApiClient::connect(url, self.resolve()?.as_ref(), self.ca_file.as_deref())
    }

    /// The token to send: from `--token-file`, else from `DYNAMO_TOKEN`
    /// (unset or empty: none).
    ///
    /// # Errors
    /// The file cannot be read or is empty, or the token is not a valid
    /// header value (the message never shows it).
    pub fn resolve(&self) -> anyhow::Result<Option<ClientToken>> {
        self.resolve_with(std::env::var(TOKEN_VARIABLE).ok())
    }

    /// [`resolve`](Self::resolve) with `variable` as the value of `DYNAMO_TOKEN`.
    fn resolve_with(&self, variable: Option<String>) -> anyhow::Result<Option<ClientToken>> {
        let (token, source) = match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --token-file {}", path.display()))?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    anyhow::bail!("--token-file {} is empty", path.display());
                }
                (token, format!("--token-file {}", path.display()))
            }
            None => match variable.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
                Some(token) => (token, TOKEN_VARIABLE.to_string()),
                None => return Ok(None),
            },
        };
        ClientToken::new(token).map(Some).with_context(|| format!("the token from {source}"))
    }
}

/// A bearer token: its `Debug` prints `<redacted>`, and it has no
/// `Display`, so it cannot end up in a log or an error by accident.
#[derive(Clone)]
pub struct ClientToken(String);

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientToken(<redacted>)")
    }
}

/// A token that cannot be sent in a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid token: a token is visible ASCII without spaces")]
pub struct BadToken;

impl ClientToken {
    /// `token`, checked to fit in an `Authorization` header.
    ///
    /// # Errors
    /// [`BadToken`] for an empty token, or one with spaces, control
    /// characters or non-ASCII bytes.
    pub fn new(token: String) -> Result<Self, BadToken> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BadToken);
        }
        Ok(ClientToken(token))
    }

    /// `Authorization: Bearer <token>`'s value, marked sensitive (hyper
    /// and reqwest then never show it in `Debug` output).
    pub fn header_value(&self) -> HeaderValue {
        // `new` admits only visible ASCII, which every header value takes.
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }

    /// The token itself, for a caller that must write it somewhere
    /// (`token create` prints it once).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_over_the_variable_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  dyn_fromfile\n").unwrap();
        let args = ConnectArgs { token_file: Some(file.clone()), ca_file: None };
        let token = args.resolve_with(Some("dyn_fromenv".into())).unwrap().unwrap();
        assert_eq!(token.expose(), "dyn_fromfile");
        let env = ConnectArgs::default().resolve_with(Some(" dyn_fromenv ".into())).unwrap().unwrap();
        assert_eq!(env.expose(), "dyn_fromenv");
        assert!(ConnectArgs::default().resolve_with(None).unwrap().is_none());
        assert!(ConnectArgs::default().resolve_with(Some(String::new())).unwrap().is_none());
    }

    #[test]
    fn bad_sources_are_errors_that_never_show_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = ConnectArgs { token_file: Some(empty), ca_file: None }.resolve_with(None).unwrap_err();
        assert!(format!("{err:#}").contains("is empty"), "{err:#}");
        let missing = ConnectArgs { token_file: Some(dir.path().join("missing")), ca_file: None }
            .resolve_with(None)
            .unwrap_err();
        assert!(format!("{missing:#}").contains("cannot read --token-file"), "{missing:#}");
        let spaced = ConnectArgs::default().resolve_with(Some("dyn_secret part".into())).unwrap_err();
        let text = format!("{spaced:#} {spaced:?}");
        assert!(text.contains("DYNAMO_TOKEN") && !text.contains("dyn_secret"), "{text}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = ClientToken::new("dyn_secretvalue".into()).unwrap();
        assert_eq!(format!("{token:?}"), "ClientToken(<redacted>)");
        let header = token.header_value();
        assert!(header.is_sensitive());
        assert_eq!(header, "Bearer dyn_secretvalue");
        assert!(!format!("{header:?}").contains("secret"));
        let client = crate::client::ApiClient::connect("127.0.0.1:1", Some(&token), None).unwrap();
        assert!(!format!("{client:?}").contains("secret"), "{client:?}");
    }
}
