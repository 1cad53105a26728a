//! `dynamo-server token …`: the client tokens file (`http.tokens_file`,
//! format in [`crate::tokens`]) from the shell.
//!
//! ```sh
//! dynamo-server token create --file tokens.toml --name ci --scope read --scope write --expires-in 90d
//! dynamo-server token list --file tokens.toml
//! dynamo-server token revoke --file tokens.toml --name ci
//! ```
//!
//! `create` prints the new token on stdout, once: the file keeps only its
//! SHA-256, so it cannot be shown again (create another and revoke this one
//! if it is lost). `list` shows names, scopes and expiry. Nodes read the
//! file at start and again at each SIGHUP (or restart them).
//!
//! Every change is checked against the whole file first (a broken file is
//! refused, never made worse), keeps what an operator wrote in it
//! (comments, order), and is written atomically: a temporary file beside
//! it, with mode 0600 on Unix, written and flushed to disk, then renamed
//! over it, so a crash leaves either the old file or the new one. Two
//! changes run at the same moment may lose one of them: make changes one
//! at a time.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::client_token::ClientToken;
use crate::tokens::{self, Scope, Scopes, TokenRecord, Tokens, TokensError};

/// The last second humantime can write (the end of year 9999).
const LATEST_EXPIRY_SECS: u64 = 253_402_300_799;

/// What a tokens file made by `token create` starts with.
const NEW_FILE_HEADER: &str = "# dynamo-server client tokens (http.tokens_file). Each entry keeps the\n\
# SHA-256 of a token, never the token. Edit with `dynamo-server token\n\
# create | list | revoke`; nodes read this file at start and at SIGHUP.\n\n";

/// Options of `token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenCmdArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

/// A `token` command.
#[derive(Debug, Clone, clap::Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once) on stdout; the file, created if
    /// missing (mode 0600), keeps only its SHA-256.
    Create {
        /// The tokens file.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// The token's name: unique in the file; logs and errors show it.
        #[arg(long)]
        name: String,
        /// What it may do (repeat for several): read (GET of keys), write
        /// (PUT, DELETE of keys), admin (/metrics, /admin/…, and all the rest).
        #[arg(long = "scope", value_name = "SCOPE", value_enum, required = true)]
        scopes: Vec<Scope>,
        /// Expire after this long, e.g. `30d`, `12h`, `1y`; default never.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List the tokens: name, scopes, expiry.
    List {
        /// The tokens file.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
    },
    /// Remove a token from the file.
    Revoke {
        /// The tokens file.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// The token's name.
        #[arg(long)]
        name: String,
    },
}

/// Why a change to the tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file as it stands is not a valid tokens file.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The new token's name is taken.
    #[error("tokens file {}: a token named {name:?} already exists (revoke it first, or pick another name)", .path.display())]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// No token has that name.
    #[error("tokens file {}: no token named {name:?}", .path.display())]
    NoSuchName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// The new entry would be invalid (its name, its scopes, its expiry).
    #[error("{0}")]
    BadEntry(String),
    /// The file keeps its tokens in a form this command does not edit
    /// (an inline `token = [...]` array).
    #[error("tokens file {}: write each token as a [[token]] table for this command to edit it", .path.display())]
    NotEditable {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be written.
    #[error("cannot write tokens file {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A token just created: the secret (to show once) and its entry.
#[derive(Debug)]
pub struct Created {
    /// The token string (its `Debug` is redacted).
    pub token: ClientToken,
    /// The entry written to the file.
    pub record: TokenRecord,
}

/// Adds a new token named `name` with `scopes` (expiring `expires_in`
/// after `now`, if given) to the tokens file at `file`, creating it if
/// missing.
///
/// # Errors
/// The file exists but is not a valid tokens file, the name is taken or
/// invalid, no scope is given, the expiry is past year 9999, the random
/// number generator fails, or the file cannot be written.
pub fn create(
    file: &Path,
    name: &str,
    scopes: &[Scope],
    expires_in: Option<Duration>,
    now: SystemTime,
) -> Result<Created, TokenFileError> {
    tokens::check_name(name).map_err(|e| TokenFileError::BadEntry(format!("--name {name:?}: {e}")))?;
    let scopes = Scopes::of(scopes.iter().copied());
    if scopes.is_empty() {
        return Err(TokenFileError::BadEntry("give at least one --scope (read, write, admin)".into()));
    }
    let expires_at = match expires_in {
        None => None,
        Some(d) => Some(expiry_after(now, d)?),
    };
    let (text, records) = read_existing(file)?;
    if records.iter().any(|r| r.name == name) {
        return Err(TokenFileError::DuplicateName { path: file.to_path_buf(), name: name.to_string() });
    }
    let secret = tokens::generate_token()?;
    let record = TokenRecord {
        name: name.to_string(),
        scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
        sha256: tokens::hash_hex(&secret),
        expires_at,
    };
    // The whole file, new entry included, must load as a node would load it.
    let mut all = records;
    all.push(record.clone());
    Tokens::from_records(&all, file)?;

    let mut doc = editable(&text, file)?;
    let mut table = toml_edit::Table::new();
    table["name"] = toml_edit::value(record.name.as_str());
    table["scopes"] =
        toml_edit::value(record.scopes.iter().map(String::as_str).collect::<toml_edit::Array>());
    table["sha256"] = toml_edit::value(record.sha256.as_str());
    if let Some(at) = &record.expires_at {
        table["expires_at"] = toml_edit::value(at.as_str());
    }
    match doc.get_mut("token") {
        None => {
            // A file of comments only: they stay above the first entry.
            let comments = doc.trailing().as_str().unwrap_or("").to_string();
            doc.set_trailing("");
            table.decor_mut().set_prefix(comments);
            let mut list = toml_edit::ArrayOfTables::new();
            list.push(table);
            doc.insert("token", toml_edit::Item::ArrayOfTables(list));
        }
        Some(item) => match item.as_array_of_tables_mut() {
            Some(list) => {
                table.decor_mut().set_prefix("\n");
                list.push(table);
            }
            None => return Err(TokenFileError::NotEditable { path: file.to_path_buf() }),
        },
    }
    write_atomically(file, doc.to_string().as_bytes())
        .map_err(|source| TokenFileError::Write { path: file.to_path_buf(), source })?;
    let token =
        ClientToken::new(secret).map_err(|e| TokenFileError::BadEntry(format!("generated token: {e}")))?;
    Ok(Created { token, record })
}

/// The tokens in `file`, as written, after checking the whole file as a
/// node would.
///
/// # Errors
/// The file cannot be read or is not a valid tokens file.
pub fn list(file: &Path) -> Result<Vec<TokenRecord>, TokenFileError> {
    let text = std::fs::read_to_string(file)
        .map_err(|source| TokensError::Read { path: file.to_path_buf(), source })?;
    let records = tokens::parse_records(&text, file)?;
    Tokens::from_records(&records, file)?;
    Ok(records)
}

/// Removes the token named `name` from `file`.
///
/// # Errors
/// The file cannot be read or is not a valid tokens file, no token has
/// that name, or the file cannot be written.
pub fn revoke(file: &Path, name: &str) -> Result<TokenRecord, TokenFileError> {
    let text = std::fs::read_to_string(file)
        .map_err(|source| TokensError::Read { path: file.to_path_buf(), source })?;
    let records = tokens::parse_records(&text, file)?;
    Tokens::from_records(&records, file)?;
    let Some(record) = records.into_iter().find(|r| r.name == name) else {
        return Err(TokenFileError::NoSuchName { path: file.to_path_buf(), name: name.to_string() });
    };
    let mut doc = editable(&text, file)?;
    let list = doc
        .get_mut("token")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or_else(|| TokenFileError::NotEditable { path: file.to_path_buf() })?;
    let index = list
        .iter()
        .position(|t| t.get("name").and_then(toml_edit::Item::as_str) == Some(name))
        .ok_or_else(|| TokenFileError::NotEditable { path: file.to_path_buf() })?;
    // Comments above the entry, up to its last blank line, are about what
    // comes before it (the file's own header): they stay.
    let kept = list.get(index).map(|t| comments_before_blank_line(t.decor())).unwrap_or_default();
    list.remove(index);
    if !kept.is_empty() {
        match list.get_mut(index) {
            Some(next) => {
                let own = next.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
                let own = own.trim_start_matches('\n').to_string();
                next.decor_mut().set_prefix(format!("{kept}{own}"));
            }
            None => {
                let own = doc.trailing().as_str().unwrap_or("").to_string();
                doc.set_trailing(format!("{kept}{own}"));
            }
        }
    }
    write_atomically(file, doc.to_string().as_bytes())
        .map_err(|source| TokenFileError::Write { path: file.to_path_buf(), source })?;
    Ok(record)
}

/// What precedes an entry's header up to and including its last blank
/// line (empty when there is none).
fn comments_before_blank_line(decor: &toml_edit::Decor) -> String {
    let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or("");
    prefix.rfind("\n\n").map_or_else(String::new, |at| prefix[..at + 2].to_string())
}

/// The file's text and records; an absent file is one with only a header.
fn read_existing(file: &Path) -> Result<(String, Vec<TokenRecord>), TokenFileError> {
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let records = tokens::parse_records(&text, file)?;
            Ok((text, records))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((NEW_FILE_HEADER.to_string(), Vec::new())),
        Err(source) => Err(TokensError::Read { path: file.to_path_buf(), source }.into()),
    }
}

/// `text` as a document to edit (it has already parsed as TOML).
fn editable(text: &str, file: &Path) -> Result<toml_edit::DocumentMut, TokenFileError> {
    text.parse::<toml_edit::DocumentMut>().map_err(|e| {
        TokenFileError::Tokens(TokensError::Syntax { path: file.to_path_buf(), message: e.to_string() })
    })
}

/// `now` plus `after`, in RFC 3339 to the second.
fn expiry_after(now: SystemTime, after: Duration) -> Result<String, TokenFileError> {
    let too_far = || {
        TokenFileError::BadEntry(format!(
            "--expires-in {}: too far in the future",
            humantime::format_duration(after)
        ))
    };
    let at = now.checked_add(after).ok_or_else(too_far)?;
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| too_far())?.as_secs();
    if secs > LATEST_EXPIRY_SECS {
        return Err(too_far());
    }
    Ok(humantime::format_rfc3339_seconds(at).to_string())
}

/// Replaces `path` with `contents`: a temporary file beside it (mode 0600
/// on Unix), written, flushed to disk, renamed over `path`, and the
/// directory flushed so the rename survives a crash.
///
/// # Errors
/// Any I/O failure; the temporary file is removed then.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:08x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            // The umask may have taken bits away; 0600 exactly.
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Runs a `token` command: the token on stdout for `create`, the table
/// for `list`, notes on stderr.
///
/// # Errors
/// What the command failed on (see [`create`], [`list`], [`revoke`]).
pub fn run(args: TokenCmdArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create { file, name, scopes, expires_in } => {
            let created = create(&file, &name, &scopes, expires_in, SystemTime::now())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", created.token.expose()).context("writing the token to stdout")?;
            out.flush().context("writing the token to stdout")?;
            let expiry = created
                .record
                .expires_at
                .as_deref()
                .map_or("never expires".to_string(), |at| format!("expires {at}"));
            eprintln!(
                "token '{name}' ({}; {expiry}) added to {}. This is the only time it is shown: store it now (for the client commands: DYNAMO_TOKEN or --token-file). Nodes that use this file accept it after a SIGHUP (or a restart).",
                created.record.scopes.join(", "),
                file.display()
            );
        }
        TokenCommand::List { file } => {
            let records = list(&file)?;
            if records.is_empty() {
                eprintln!("no tokens in {}", file.display());
            } else {
                print!("{}", list_text(&records, SystemTime::now()));
            }
        }
        TokenCommand::Revoke { file, name } => {
            revoke(&file, &name)?;
            eprintln!(
                "token '{name}' removed from {}. Nodes that use this file refuse it after a SIGHUP (or a restart).",
                file.display()
            );
        }
    }
    Ok(())
}

/// `list` for a person: a table of names, scopes and expiry (marked when
/// past at `now`).
pub fn list_text(records: &[TokenRecord], now: SystemTime) -> String {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(vec!["NAME", "SCOPES", "EXPIRES"]);
    for r in records {
        let expires = match &r.expires_at {
            None => "never".to_string(),
            Some(at) => match humantime::parse_rfc3339(at) {
                Ok(t) if t <= now => format!("{at} (expired)"),
                _ => at.clone(),
            },
        };
        table.add_row(vec![r.name.clone(), r.scopes.join(", "), expires]);
    }
    format!("{}\n", table.trim_fmt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
    }

    #[test]
    fn create_list_revoke_round_trip_keeping_comments_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        let ci = create(&file, "ci", &[Scope::Read, Scope::Write], Some(Duration::from_secs(86_400)), now())
            .unwrap();
        assert!(ci.token.expose().starts_with("dyn_"));
        assert_eq!(ci.record.expires_at.as_deref(), Some("2026-01-02T00:00:00Z"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // An operator's comment survives later changes.
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(NEW_FILE_HEADER), "{text}");
        std::fs::write(&file, format!("# who holds what: see the wiki\n\n{text}")).unwrap();
        let ops = create(&file, "ops", &[Scope::Admin], None, now()).unwrap();
        let names: Vec<String> = list(&file).unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["ci", "ops"]);
        let tokens = Tokens::load(&file).unwrap();
        assert_eq!(&*tokens.lookup(ci.token.expose()).unwrap().name, "ci");
        assert!(tokens.lookup(ops.token.expose()).unwrap().grants(Scope::Write));
        let shown = list_text(&list(&file).unwrap(), now() + Duration::from_secs(2 * 86_400));
        assert!(shown.contains("2026-01-02T00:00:00Z (expired)") && shown.contains("never"), "{shown}");
        assert!(!shown.contains(&ci.record.sha256), "list never shows hashes: {shown}");

        revoke(&file, "ci").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# who holds what: see the wiki\n\n# dynamo-server client tokens"),
            "{text}"
        );
        assert!(!text.contains("\"ci\""), "{text}");
        let tokens = Tokens::load(&file).unwrap();
        assert!(tokens.lookup(ci.token.expose()).is_none());
        assert!(tokens.lookup(ops.token.expose()).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn refusals_name_the_problem_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        create(&file, "ci", &[Scope::Read], None, now()).unwrap();
        let before = std::fs::read_to_string(&file).unwrap();
        let dup = create(&file, "ci", &[Scope::Write], None, now()).unwrap_err().to_string();
        assert!(dup.contains("a token named \"ci\" already exists"), "{dup}");
        let bad = create(&file, "two words", &[Scope::Read], None, now()).unwrap_err().to_string();
        assert!(bad.contains("--name \"two words\""), "{bad}");
        let none = create(&file, "x", &[], None, now()).unwrap_err().to_string();
        assert!(none.contains("--scope"), "{none}");
        let far = create(&file, "x", &[Scope::Read], Some(Duration::from_secs(u64::MAX / 2)), now())
            .unwrap_err()
            .to_string();
        assert!(far.contains("too far in the future"), "{far}");
        let missing = revoke(&file, "nobody").unwrap_err().to_string();
        assert!(missing.contains("no token named \"nobody\""), "{missing}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

        // A broken file is refused, never edited.
        std::fs::write(&file, format!("{before}colour = \"blue\"\n")).unwrap();
        let err = create(&file, "y", &[Scope::Read], None, now()).unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err = list(&dir.path().join("absent.toml")).unwrap_err().to_string();
        assert!(err.contains("cannot read tokens file"), "{err}");
    }
}
