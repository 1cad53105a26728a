//! Client authentication on the HTTP API: which scope a request needs,
//! whether its bearer token grants it, and the `401`/`403` answers.
//!
//! With `http.tokens_file` set, every request but `/health` must carry
//! `Authorization: Bearer <token>` with a token of that file
//! ([`crate::tokens`]). The check runs in the listener before a request is
//! routed ([`crate::http_listener`]), so a refused request costs the node
//! one SHA-256 and no store or replica work.
//!
//! | request | scope needed |
//! |---|---|
//! | `/health` | none, always open (load balancers, `dev`) |
//! | `GET`, `HEAD` of `/kv/…` | `read` |
//! | any other method on `/kv/…` (`PUT`, `DELETE`, `POST`) | `write` |
//! | `/metrics`, `/admin` and everything under `/admin/` | `admin` |
//! | any other path | `read` (then `404`) |
//!
//! `admin` grants every scope: it is an operator's token.
//!
//! Refusals: no `Authorization` header, one that is not `Bearer <token>`,
//! an unknown token or an expired one get `401` with `WWW-Authenticate:
//! Bearer realm="dynamo"` (plus `error="invalid_token"` for the last two,
//! as RFC 6750 has it); a valid token without the scope gets `403` naming
//! the scope and the token. Messages never contain the token.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Response, StatusCode};

use crate::config::HttpConfig;
use crate::tokens::{Scope, TokenEntry, TokenStore, Tokens, TokensError};

/// The realm of every `WWW-Authenticate` challenge.
pub const REALM: &str = "dynamo";

/// The tokens `http.tokens_file` names, loaded and checked, and logged:
/// how many and from where, or (`None`, no `tokens_file`) a warning that
/// the client API is open to anyone who can reach it.
///
/// # Errors
/// The file cannot be read or holds a bad entry ([`TokensError`]).
pub fn load_tokens(http: &HttpConfig) -> Result<Option<Arc<TokenStore>>, TokensError> {
    let Some(path) = http.tokens_path() else {
        tracing::warn!(
            http = %http.listen,
            "client authentication is off (no http.tokens_file): the HTTP API is open to anyone who can reach it"
        );
        return Ok(None);
    };
    let store = TokenStore::load(path)?;
    let count = store.current().len();
    if count == 0 {
        tracing::warn!(file = %path.display(), "the tokens file holds no token: every request but /health is refused");
    } else {
        tracing::info!(file = %path.display(), tokens = count, "client authentication on; SIGHUP reloads the file");
    }
    Ok(Some(Arc::new(store)))
}

/// The scope a request for `path` with `method` needs; `None` for
/// `/health`, which is open to all (see the module docs for the table).
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    if path == "/health" {
        return None;
    }
    if path == "/metrics" || path == "/admin" || path.starts_with("/admin/") {
        return Some(Scope::Admin);
    }
    if path == "/kv" || path.starts_with("/kv/") {
        // Anything that is not known to only read needs write.
        return Some(if matches!(*method, Method::GET | Method::HEAD) { Scope::Read } else { Scope::Write });
    }
    Some(Scope::Read)
}

/// Why a request was not authenticated: a `401`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// No `Authorization` header.
    #[error("this node requires a bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    /// A well-formed token the node does not know.
    #[error("unknown token")]
    Unknown,
    /// A token past its expiry.
    #[error("token '{name}' has expired")]
    Expired {
        /// The token's name.
        name: Arc<str>,
    },
}

impl Unauthenticated {
    /// The `401` JSON answer, with its `WWW-Authenticate` challenge.
    pub fn response(&self) -> Response<Body> {
        let challenge = match self {
            Unauthenticated::Missing | Unauthenticated::Malformed => format!("Bearer realm=\"{REALM}\""),
            Unauthenticated::Unknown | Unauthenticated::Expired { .. } => {
                format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")
            }
        };
        json_answer(StatusCode::UNAUTHORIZED, &self.to_string(), challenge)
    }
}

/// A valid token without the scope a request needs: a `403`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token '{name}' lacks scope {needed}, which {method} {area} needs (admin grants every scope)")]
pub struct Forbidden {
    /// The token's name.
    pub name: Arc<str>,
    /// The scope the request needs.
    pub needed: Scope,
    /// The request's method.
    pub method: Method,
    /// What the request's path is: `/kv/…`, `/metrics`, `/admin/…` or `this path`.
    pub area: &'static str,
}

impl Forbidden {
    /// The `403` JSON answer, with an `insufficient_scope` challenge.
    pub fn response(&self) -> Response<Body> {
        let challenge =
            format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"", self.needed);
        json_answer(StatusCode::FORBIDDEN, &self.to_string(), challenge)
    }
}

/// The token of an `Authorization` header value: `Bearer <token>`, the
/// scheme in any case (RFC 7235), one or more spaces before the token.
///
/// # Errors
/// [`Unauthenticated::Malformed`] for another scheme, no token, a token
/// with spaces in it, or bytes that are not visible ASCII.
pub fn bearer_token(value: &HeaderValue) -> Result<&str, Unauthenticated> {
    let value = value.to_str().map_err(|_| Unauthenticated::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Unauthenticated::Malformed)?;
    let token = token.trim_start_matches(' ').trim_end();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains([' ', '\t']) {
        return Err(Unauthenticated::Malformed);
    }
    Ok(token)
}

/// The token entry an `Authorization` header (`None`: absent) stands for
/// at `now`.
///
/// # Errors
/// Why the request is not authenticated.
pub fn authenticate<'t>(
    tokens: &'t Tokens,
    authorization: Option<&HeaderValue>,
    now: SystemTime,
) -> Result<&'t TokenEntry, Unauthenticated> {
    let token = bearer_token(authorization.ok_or(Unauthenticated::Missing)?)?;
    let entry = tokens.lookup(token).ok_or(Unauthenticated::Unknown)?;
    if entry.is_expired(now) {
        return Err(Unauthenticated::Expired { name: Arc::clone(&entry.name) });
    }
    Ok(entry)
}

/// `Ok` if `entry` grants `needed` for a request of `method` on `path`.
///
/// # Errors
/// The [`Forbidden`] answer naming the token and the scope.
pub fn authorize(entry: &TokenEntry, needed: Scope, method: &Method, path: &str) -> Result<(), Forbidden> {
    if entry.grants(needed) {
        return Ok(());
    }
    let area = if path == "/kv" || path.starts_with("/kv/") {
        "/kv/…"
    } else if path == "/metrics" {
        "/metrics"
    } else if path == "/admin" || path.starts_with("/admin/") {
        "/admin/…"
    } else {
        "this path"
    };
    Err(Forbidden { name: Arc::clone(&entry.name), needed, method: method.clone(), area })
}

fn json_answer(status: StatusCode, message: &str, challenge: String) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(challenge) = HeaderValue::from_str(&challenge) {
        headers.insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tokens::hash_hex;

    #[test]
    fn scopes_follow_the_table() {
        let get = Method::GET;
        assert_eq!(required_scope(&get, "/health"), None);
        assert_eq!(required_scope(&Method::POST, "/health"), None);
        assert_eq!(required_scope(&get, "/kv/a"), Some(Scope::Read));
        assert_eq!(required_scope(&Method::HEAD, "/kv/a"), Some(Scope::Read));
        for m in [Method::PUT, Method::DELETE, Method::POST, Method::PATCH, Method::OPTIONS] {
            assert_eq!(required_scope(&m, "/kv/a"), Some(Scope::Write), "{m}");
        }
        assert_eq!(required_scope(&Method::PUT, "/kv"), Some(Scope::Write));
        for path in ["/metrics", "/admin", "/admin/ring", "/admin/cluster/commit", "/admin/local/k"] {
            assert_eq!(required_scope(&get, path), Some(Scope::Admin), "{path}");
            assert_eq!(required_scope(&Method::POST, path), Some(Scope::Admin), "{path}");
        }
        for path in ["/", "/nope", "/kvx", "/administrator", "/metrics/", "/health/"] {
            assert_eq!(required_scope(&Method::PUT, path), Some(Scope::Read), "{path}");
        }
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer_token(&h("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&h("bearer  abc")), Ok("abc"));
        assert_eq!(bearer_token(&h("BEARER abc")), Ok("abc"));
        for bad in ["Bearer", "Bearer ", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer a b", "abc", "Token abc"] {
            assert_eq!(bearer_token(&h(bad)), Err(Unauthenticated::Malformed), "{bad:?}");
        }
        let opaque = HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
        assert_eq!(bearer_token(&opaque), Err(Unauthenticated::Malformed));
    }

    fn tokens() -> Tokens {
        let text = format!(
            "[[token]]\nname = \"reader\"\nscopes = [\"read\"]\nsha256 = \"{}\"\n\
             [[token]]\nname = \"old\"\nscopes = [\"admin\"]\nsha256 = \"{}\"\nexpires_at = \"2020-01-01T00:00:00Z\"\n",
            hash_hex("read-token"),
            hash_hex("old-token"),
        );
        Tokens::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn each_refusal_says_why_and_never_echoes_the_token() {
        let tokens = tokens();
        let now = SystemTime::now();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(authenticate(&tokens, None, now), Err(Unauthenticated::Missing));
        assert_eq!(authenticate(&tokens, Some(&h("Basic x")), now), Err(Unauthenticated::Malformed));
        assert_eq!(authenticate(&tokens, Some(&h("Bearer guess-token")), now), Err(Unauthenticated::Unknown));
        let expired = authenticate(&tokens, Some(&h("Bearer old-token")), now).unwrap_err();
        assert_eq!(expired.to_string(), "token 'old' has expired");
        let then = humantime::parse_rfc3339("2019-12-31T23:59:59Z").unwrap();
        assert_eq!(&*authenticate(&tokens, Some(&h("Bearer old-token")), then).unwrap().name, "old");
        let reader = authenticate(&tokens, Some(&h("Bearer read-token")), now).unwrap();
        assert_eq!(&*reader.name, "reader");
        for refusal in
            [Unauthenticated::Missing, Unauthenticated::Malformed, Unauthenticated::Unknown, expired.clone()]
        {
            let text = refusal.to_string();
            assert!(!text.contains("token-") && !text.contains("guess"), "{text}");
            let response = refusal.response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.starts_with("Bearer realm=\"dynamo\""), "{challenge}");
            let invalid = matches!(refusal, Unauthenticated::Unknown | Unauthenticated::Expired { .. });
            assert_eq!(challenge.contains("error=\"invalid_token\""), invalid, "{challenge}");
        }
    }

    #[test]
    fn a_token_without_the_scope_is_forbidden_by_name() {
        let tokens = tokens();
        let reader = tokens.lookup("read-token").unwrap();
        assert!(authorize(reader, Scope::Read, &Method::GET, "/kv/a").is_ok());
        let denied = authorize(reader, Scope::Write, &Method::PUT, "/kv/a").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "token 'reader' lacks scope write, which PUT /kv/… needs (admin grants every scope)"
        );
        let denied = authorize(reader, Scope::Admin, &Method::GET, "/metrics").unwrap_err();
        let response = denied.response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"dynamo\", error=\"insufficient_scope\", scope=\"admin\""
        );
        let admin = tokens.lookup("old-token").unwrap();
        assert!(authorize(admin, Scope::Write, &Method::PUT, "/kv/a").is_ok(), "admin grants write");
    }
}
