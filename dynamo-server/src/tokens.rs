//! Client bearer tokens: the tokens file (`http.tokens_file`) and the set
//! of tokens a node accepts, kept as hashes only.
//!
//! The file is TOML with one `[[token]]` table per token:
//!
//! ```toml
//! [[token]]
//! name = "ci-deploy"                 # unique; what logs and errors show
//! scopes = ["read", "write"]         # any of read, write, admin
//! sha256 = "9f86d0…"                 # hex SHA-256 of the whole token string
//! expires_at = "2027-01-01T00:00:00Z" # optional, RFC 3339 in UTC
//! ```
//!
//! `dynamo-server token create` writes such entries ([`crate::token_cmd`]);
//! an operator may write them by hand too (any token string works, though
//! it should be as random as the generated ones). The node loads the file
//! at start; a file that cannot be read or parsed, an unknown key or
//! field, a name or hash listed twice, an unknown scope, an empty scope
//! list, a hash that is not 64 hex digits or a bad expiry refuses the
//! start with an error naming the file and the entry ([`TokensError`]).
//! SIGHUP reloads it ([`TokenStore`]): a created or revoked token takes
//! effect without a restart, and a file that no longer checks out is
//! reported and leaves the tokens in use as they were.
//!
//! Scopes ([`Scope`]): `read` for `GET`/`HEAD` of keys, `write` for
//! `PUT`/`DELETE`/`POST` of keys, `admin` for `/metrics` and `/admin/…`.
//! `admin` grants every scope: it is an operator's token. `write` does not
//! imply `read`: a client that reads and writes lists both.
//!
//! A generated token is `dyn_` followed by 32 bytes from the operating
//! system's random number generator, base64url without padding: 256 bits
//! of entropy. The node keeps only each token's SHA-256, so neither the
//! file nor the node's memory holds anything that authenticates. A plain,
//! fast hash suffices because the token is not a password: slow hashes
//! (argon2, bcrypt, scrypt) exist to make guessing a low-entropy secret
//! from its hash expensive, and guessing one of 2^256 values is out of
//! reach whatever the hash costs. A slow hash would only add milliseconds
//! of CPU to every request, a gift to anyone flooding the port.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::TryRngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What every generated token starts with, so a leaked one is easy to
/// recognise (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "dyn_";

/// Random bytes in a generated token.
pub const TOKEN_BYTES: usize = 32;

/// Longest token name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// The SHA-256 of a token string: what the node keeps.
pub type TokenHash = [u8; 32];

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scope {
    /// Read keys: `GET` and `HEAD` of `/kv/…` (and any path that is not a
    /// key, an admin path or `/metrics`).
    Read,
    /// Write keys: `PUT`, `DELETE` and `POST` of `/kv/…`.
    Write,
    /// `/metrics` and everything under `/admin/`; grants every scope.
    Admin,
}

impl Scope {
    /// Every scope, in the order they are shown.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// The scope's name in the tokens file: `read`, `write` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `name` (exactly as written in the file).
    pub fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// The set of `scopes`.
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut set = Scopes::default();
        for s in scopes {
            set.insert(s);
        }
        set
    }

    /// Adds `scope`.
    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    /// Whether `scope` is in the set itself.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether a token with these scopes may do what `needed` allows:
    /// it holds `needed`, or `admin`.
    pub fn grants(self, needed: Scope) -> bool {
        self.contains(needed) || self.contains(Scope::Admin)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl fmt::Display for Scopes {
    /// `read, write`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One accepted token, as the node knows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// Its name, shown in logs and errors.
    pub name: Arc<str>,
    /// What it may do.
    pub scopes: Scopes,
    /// When it stops being accepted; `None`: never.
    pub expires_at: Option<SystemTime>,
}

impl TokenEntry {
    /// Whether the token may do what `needed` allows (see [`Scopes::grants`]).
    pub fn grants(&self, needed: Scope) -> bool {
        self.scopes.grants(needed)
    }

    /// Whether the token has expired at `now` (its expiry is the first
    /// instant it is refused).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// One `[[token]]` table as written in the tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Unique, non-empty name: ASCII letters, digits and `-_.@:`, at most
    /// [`MAX_NAME_LEN`] bytes.
    pub name: String,
    /// A non-empty subset of `read`, `write`, `admin`.
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the whole token string (64 hex digits).
    pub sha256: String,
    /// RFC 3339 in UTC (`2027-01-01T00:00:00Z`); absent: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl TokenRecord {
    /// The entry and hash this record describes.
    ///
    /// # Errors
    /// The first [`EntryProblem`] found in it.
    pub fn check(&self) -> Result<(TokenHash, TokenEntry), EntryProblem> {
        check_name(&self.name)?;
        if self.scopes.is_empty() {
            return Err(EntryProblem::NoScopes);
        }
        let mut scopes = Scopes::default();
        for s in &self.scopes {
            scopes.insert(Scope::from_name(s).ok_or_else(|| EntryProblem::UnknownScope(s.clone()))?);
        }
        let hash = parse_hash(&self.sha256).ok_or(EntryProblem::BadHash)?;
        let expires_at = match &self.expires_at {
            None => None,
            Some(at) => Some(
                humantime::parse_rfc3339(at)
                    .map_err(|e| EntryProblem::BadExpiry(at.clone(), e.to_string()))?,
            ),
        };
        Ok((hash, TokenEntry { name: Arc::from(self.name.as_str()), scopes, expires_at }))
    }
}

/// Checks a token name: non-empty, at most [`MAX_NAME_LEN`] bytes of ASCII
/// letters, digits and `-_.@:` (it appears in logs and error messages).
///
/// # Errors
/// [`EntryProblem::BadName`] saying what is wrong.
pub fn check_name(name: &str) -> Result<(), EntryProblem> {
    let bad = |why: &str| Err(EntryProblem::BadName(why.to_string()));
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("the name is longer than {MAX_NAME_LEN} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b)) {
        return bad("a name holds only ASCII letters, digits and - _ . @ :");
    }
    Ok(())
}

/// What is wrong with one `[[token]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    /// Not a table, a missing or unknown field, or a field of the wrong
    /// type (the parser's words).
    #[error("{0}")]
    Invalid(String),
    /// A bad `name`.
    #[error("bad name: {0}")]
    BadName(String),
    /// Another entry has the same name.
    #[error("the name is already used by token #{0}")]
    DuplicateName(usize),
    /// Another entry has the same hash (the same token twice).
    #[error("the same sha256 as token #{0}: one token string, two entries")]
    DuplicateHash(usize),
    /// `scopes` is empty.
    #[error("scopes is empty: give at least one of read, write, admin")]
    NoScopes,
    /// A scope that does not exist.
    #[error("unknown scope {0:?}: use read, write or admin")]
    UnknownScope(String),
    /// `sha256` is not 64 hex digits.
    #[error("sha256 must be 64 hex digits (the SHA-256 of the token string)")]
    BadHash,
    /// `expires_at` is not an RFC 3339 time in UTC.
    #[error("expires_at {0:?} is not an RFC 3339 time in UTC such as 2027-01-01T00:00:00Z ({1})")]
    BadExpiry(String, String),
}

/// Why a tokens file was refused. Every message names the file; entry
/// problems name the entry by position (from 1) and name.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("cannot read tokens file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML, or not a list of `[[token]]` tables.
    #[error("tokens file {}: {message}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with the line), or what shape is wrong.
        message: String,
    },
    /// One entry is wrong.
    #[error("tokens file {}: token #{index}{}: {problem}", .path.display(), name_suffix(.name))]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry's position in the file, from 1.
        index: usize,
        /// Its name, when it has one.
        name: Option<String>,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

fn name_suffix(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default()
}

/// The tokens a node accepts now, reloadable from their file while the
/// node serves (on SIGHUP, see `serve`): a request reads the set in use
/// (one uncontended read lock and an `Arc` clone), a reload swaps in a
/// new set only if the whole file checks out, so a bad edit never locks
/// clients out.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    current: RwLock<Arc<Tokens>>,
}

impl TokenStore {
    /// A store serving `tokens`, reloadable from `path`.
    pub fn new(path: PathBuf, tokens: Tokens) -> Self {
        TokenStore { path, current: RwLock::new(Arc::new(tokens)) }
    }

    /// The tokens file at `path`, read and checked.
    ///
    /// # Errors
    /// See [`Tokens::load`].
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        Ok(TokenStore::new(path.to_path_buf(), Tokens::load(path)?))
    }

    /// The file the tokens come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens in use.
    pub fn current(&self) -> Arc<Tokens> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the file again and, if it checks out, serves its tokens from
    /// now on; how many there are.
    ///
    /// # Errors
    /// See [`Tokens::load`]; the tokens in use stay as they were.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let tokens = Tokens::load(&self.path)?;
        let count = tokens.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
        Ok(count)
    }
}

/// The tokens a node accepts, by the SHA-256 of the token string.
#[derive(Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<TokenHash, TokenEntry>,
}

impl fmt::Debug for Tokens {
    /// The names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_hash.values().map(|e| &*e.name).collect();
        names.sort_unstable();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

impl Tokens {
    /// Reads and checks the tokens file at `path`.
    ///
    /// # Errors
    /// See [`TokensError`]: the file cannot be read, or any entry is wrong.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokensError::Read { path: path.to_path_buf(), source })?;
        Tokens::parse(&text, path)
    }

    /// Checks the text of a tokens file; `path` is only for messages.
    ///
    /// # Errors
    /// See [`TokensError`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokensError> {
        let records = parse_records(text, path)?;
        Tokens::from_records(&records, path)
    }

    /// The tokens `records` describe; `path` is only for messages.
    ///
    /// # Errors
    /// [`TokensError::Entry`] for the first entry that is wrong or repeats
    /// an earlier one's name or hash.
    pub fn from_records(records: &[TokenRecord], path: &Path) -> Result<Self, TokensError> {
        let mut by_hash: HashMap<TokenHash, TokenEntry> = HashMap::with_capacity(records.len());
        let mut hash_index: HashMap<TokenHash, usize> = HashMap::with_capacity(records.len());
        let mut names: HashMap<&str, usize> = HashMap::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let index = i + 1;
            let entry_error = |problem| TokensError::Entry {
                path: path.to_path_buf(),
                index,
                name: Some(record.name.clone()).filter(|n| !n.is_empty()),
                problem,
            };
            let (hash, entry) = record.check().map_err(entry_error)?;
            if let Some(&first) = names.get(record.name.as_str()) {
                return Err(entry_error(EntryProblem::DuplicateName(first)));
            }
            if let Some(&first) = hash_index.get(&hash) {
                return Err(entry_error(EntryProblem::DuplicateHash(first)));
            }
            names.insert(&record.name, index);
            hash_index.insert(hash, index);
            by_hash.insert(hash, entry);
        }
        Ok(Tokens { by_hash })
    }

    /// The entry of the token string `token`, if it is one of these.
    ///
    /// The token is hashed and the hash looked up: what a lookup's timing
    /// could reveal is about the hash, and learning bits of a SHA-256
    /// tells nothing about a string that hashes to it, so no
    /// constant-time comparison is needed.
    pub fn lookup(&self, token: &str) -> Option<&TokenEntry> {
        self.by_hash.get(&hash_token(token))
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none (then every request but `/health` is refused).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The `[[token]]` records of a tokens file's text, each as written
/// (unchecked but for its shape); `path` is only for messages.
///
/// # Errors
/// [`TokensError::Syntax`] for text that is not TOML, a key other than
/// `token` or a `token` that is not an array of tables;
/// [`TokensError::Entry`] for an entry with a missing, unknown or mistyped
/// field.
pub fn parse_records(text: &str, path: &Path) -> Result<Vec<TokenRecord>, TokensError> {
    let syntax = |message: String| TokensError::Syntax { path: path.to_path_buf(), message };
    let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| syntax(e.to_string()))?;
    if let Some(key) = doc.keys().find(|k| *k != "token") {
        return Err(syntax(format!("unknown key {key:?}: the file holds only [[token]] tables")));
    }
    let entries = match doc.remove("token") {
        None => Vec::new(),
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => return Err(syntax("`token` must be an array of tables: write each as [[token]]".into())),
    };
    let mut records = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let name = entry.get("name").and_then(toml::Value::as_str).map(str::to_string);
        let entry_error =
            |problem| TokensError::Entry { path: path.to_path_buf(), index: i + 1, name, problem };
        let toml::Value::Table(mut table) = entry else {
            return Err(entry_error(EntryProblem::Invalid(
                "not a table: write each token as [[token]]".into(),
            )));
        };
        // An unquoted TOML date-time is as good as the string form.
        if let Some(toml::Value::Datetime(at)) = table.get("expires_at") {
            let at = at.to_string();
            table.insert("expires_at".into(), toml::Value::String(at));
        }
        match toml::Value::Table(table).try_into::<TokenRecord>() {
            Ok(record) => records.push(record),
            Err(e) => return Err(entry_error(EntryProblem::Invalid(e.message().to_string()))),
        }
    }
    Ok(records)
}

/// The SHA-256 of a token string.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of a token string in lowercase hex, as the tokens file
/// holds it.
pub fn hash_hex(token: &str) -> String {
    hex::encode(hash_token(token))
}

/// A hash written as 64 hex digits (either case).
fn parse_hash(text: &str) -> Option<TokenHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A new token: [`TOKEN_PREFIX`] and [`TOKEN_BYTES`] bytes from the
/// operating system's random number generator, base64url without padding.
///
/// # Errors
/// [`TokensError::Random`] if the operating system cannot give random bytes.
pub fn generate_token() -> Result<String, TokensError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| TokensError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const FILE: &str = "tokens.toml";

    fn parse(text: &str) -> Result<Tokens, TokensError> {
        Tokens::parse(text, Path::new(FILE))
    }

    fn entry(name: &str, scopes: &str, token: &str) -> String {
        format!("[[token]]\nname = \"{name}\"\nscopes = [{scopes}]\nsha256 = \"{}\"\n", hash_hex(token))
    }

    #[test]
    fn generated_tokens_are_prefixed_random_and_hash_to_what_the_file_holds() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX), "{a}");
        let body = &a[TOKEN_PREFIX.len()..];
        assert_eq!(body.len(), 43, "32 bytes in base64url without padding");
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), TOKEN_BYTES);
        let text = entry("ci", "\"read\"", &a);
        let tokens = parse(&text).unwrap();
        assert_eq!(tokens.len(), 1);
        let found = tokens.lookup(&a).expect("the token authenticates");
        assert_eq!(&*found.name, "ci");
        assert!(tokens.lookup(&b).is_none());
        assert!(tokens.lookup("").is_none());
    }

    #[test]
    fn hashes_are_sha256_in_hex_and_parse_in_either_case() {
        // The SHA-256 of "abc" (FIPS 180-2 test vector).
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hash_hex("abc"), abc);
        assert_eq!(parse_hash(abc), Some(hash_token("abc")));
        assert_eq!(parse_hash(&abc.to_uppercase()), Some(hash_token("abc")));
        assert_eq!(parse_hash(&abc[1..]), None);
        assert_eq!(parse_hash(&format!("{}g", &abc[1..])), None);
        assert_eq!(parse_hash(&format!("{}é", &abc[2..])), None, "non-ASCII never panics");
    }

    #[test]
    fn admin_grants_every_scope_and_others_only_their_own() {
        let admin = Scopes::of([Scope::Admin]);
        let rw = Scopes::of([Scope::Read, Scope::Write]);
        let w = Scopes::of([Scope::Write]);
        assert!(Scope::ALL.into_iter().all(|s| admin.grants(s)));
        assert!(rw.grants(Scope::Read) && rw.grants(Scope::Write) && !rw.grants(Scope::Admin));
        assert!(!w.grants(Scope::Read), "write does not imply read");
        assert_eq!(rw.to_string(), "read, write");
        assert!(Scopes::default().is_empty());
    }

    #[test]
    fn expiry_is_parsed_and_checked() {
        let text = format!(
            "{}expires_at = \"2027-01-01T00:00:00Z\"\n{}expires_at = 2020-01-01T00:00:00Z\n",
            entry("later", "\"read\"", "t1"),
            entry("past", "\"read\"", "t2")
        );
        let tokens = parse(&text).unwrap();
        let later = tokens.lookup("t1").unwrap();
        let at = humantime::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        assert_eq!(later.expires_at, Some(at));
        assert!(!later.is_expired(at - Duration::from_secs(1)));
        assert!(later.is_expired(at));
        assert!(tokens.lookup("t2").unwrap().is_expired(SystemTime::now()), "a bare TOML date-time works");
    }

    /// Each mistake refuses the whole file, naming the file, the entry and
    /// the problem.
    #[test]
    fn every_mistake_is_refused_naming_the_file_and_the_entry() {
        let good = entry("reader", "\"read\"", "t1");
        let cases: Vec<(String, &[&str])> = vec![
            (
                format!("{good}{}", entry("reader", "\"write\"", "t2")),
                &["token #2 (\"reader\")", "already used by token #1"],
            ),
            (
                format!("{good}{}", entry("other", "\"write\"", "t1")),
                &["token #2 (\"other\")", "same sha256 as token #1"],
            ),
            (entry("x", "\"reed\"", "t1"), &["token #1 (\"x\")", "unknown scope \"reed\""]),
            (entry("x", "", "t1"), &["token #1", "scopes is empty"]),
            (entry("", "\"read\"", "t1"), &["token #1", "the name is empty"]),
            (entry("has space", "\"read\"", "t1"), &["bad name"]),
            (good.replace(&hash_hex("t1"), "abc123"), &["token #1 (\"reader\")", "64 hex digits"]),
            (format!("{good}colour = \"blue\"\n"), &["token #1 (\"reader\")", "unknown field `colour`"]),
            (format!("{good}expires_at = \"next week\"\n"), &["token #1", "expires_at \"next week\""]),
            (format!("{good}expires_at = \"2027-01-01T00:00:00+02:00\"\n"), &["RFC 3339 time in UTC"]),
            (
                "[[token]]\nname = \"x\"\nscopes = [\"read\"]\n".to_string(),
                &["token #1 (\"x\")", "missing field `sha256`"],
            ),
            (format!("{good}[[tokens]]\nname = \"y\"\n"), &["unknown key \"tokens\""]),
            ("[token]\nname = \"x\"\n".to_string(), &["[[token]]"]),
            ("token = [1]\n".to_string(), &["token #1", "not a table"]),
            ("[[token]\n".to_string(), &["TOML parse error"]),
        ];
        for (text, words) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("tokens file {FILE}: ")), "{err}");
            for word in words {
                assert!(err.contains(word), "{err:?} should say {word:?}\n{text}");
            }
            assert!(!err.contains(&hash_hex("t1")), "errors never show hashes: {err}");
        }
    }

    #[test]
    fn an_empty_file_has_no_tokens_and_a_missing_one_is_named() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# no tokens yet\n").unwrap().is_empty());
        let err = Tokens::load(Path::new("/nonexistent/dir/tokens.toml")).unwrap_err().to_string();
        assert!(err.starts_with("cannot read tokens file /nonexistent/dir/tokens.toml"), "{err}");
    }

    #[test]
    fn debug_shows_names_never_hashes() {
        let tokens = parse(&entry("ci", "\"read\"", "secret-token")).unwrap();
        let debug = format!("{tokens:?}");
        assert!(debug.contains("ci"), "{debug}");
        assert!(
            !debug.contains(&hash_hex("secret-token")[..16]) && !debug.contains("secret-token"),
            "{debug}"
        );
    }
}
