//! Assembling a [`ServerConfig`] from its layers: built-in defaults, the
//! TOML file, `DYNAMO_*` environment variables, then command-line flags.
//!
//! Errors name the key as the user wrote it (`cluster.w` in the file,
//! `DYNAMO_CLUSTER__W` in the environment), never figment's internal
//! profile path. The documented variables that are not configuration keys
//! ([`NON_CONFIG_VARIABLES`]) are left alone; any other `DYNAMO_*`
//! variable must be a key, so a misspelling is refused by name.

use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Source};

use super::{CliOverrides, ConfigError, ServerConfig};

/// Environment variables with the `DYNAMO_` prefix that are not
/// configuration keys: the client commands' node URL, token and CA file,
/// the tests' seeds and the crash harness's. `serve` and `dev` ignore them.
pub const NON_CONFIG_VARIABLES: [&str; 8] = [
    "DYNAMO_URL",
    "DYNAMO_TOKEN",
    "DYNAMO_CA_FILE",
    "DYNAMO_TEST_SEED",
    "DYNAMO_SIM_FROM",
    "DYNAMO_SIM_LOG",
    "DYNAMO_CRASH_CHILD_DIR",
    "DYNAMO_CRASH_ROUND",
];

const PREFIX: &str = "DYNAMO_";
const SEPARATOR: &str = "__";

/// A loaded configuration, and what loading decided on the user's behalf
/// (to be logged once logging is set up).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The validated configuration.
    pub config: ServerConfig,
    /// Adjustments made to unset keys, e.g. N, R and W fitted to a
    /// single-node cluster.
    pub notes: Vec<String>,
}

impl ServerConfig {
    /// Assembles the layers: defaults, the TOML file `file` (if given; it
    /// must exist), `DYNAMO_*` variables, then `overrides` (flags), and
    /// validates the result. Touches nothing on disk but the file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, variable or key at fault.
    pub fn load(file: Option<&Path>, overrides: &CliOverrides) -> Result<ServerConfig, ConfigError> {
        Ok(ServerConfig::load_explained(file, overrides)?.config)
    }

    /// [`ServerConfig::load`], and the notes of what it adjusted: with no
    /// `[[members]]` (a single node) and `cluster.n`, `r`, `w` not set by
    /// any layer, they are fitted to one member (N = R = W = 1), so
    /// `serve` with no configuration at all starts a usable node.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, variable or key at fault.
    pub fn load_explained(file: Option<&Path>, overrides: &CliOverrides) -> Result<Loaded, ConfigError> {
        let mut user = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", path.display())));
            }
            user = user.merge(Toml::file_exact(path));
        }
        user = user.merge(environment()).merge(Serialized::defaults(overrides));
        let figment = Figment::from(Serialized::defaults(ServerConfig::default())).merge(user.clone());
        let mut config: ServerConfig = figment.extract().map_err(|e| ConfigError::Load(describe(e)))?;
        let notes = fit_single_node(&mut config, &user);
        config.validate().map_err(|e| match (e, notes.first()) {
            (ConfigError::Invalid(message), Some(note)) => {
                ConfigError::Invalid(format!("{message} ({note})"))
            }
            (e, _) => e,
        })?;
        Ok(Loaded { config, notes })
    }
}

/// The `DYNAMO_*` variables that are configuration keys.
fn environment() -> Env {
    let ignored: Vec<&str> = NON_CONFIG_VARIABLES.iter().map(|v| &v[PREFIX.len()..]).collect();
    Env::prefixed(PREFIX).ignore(&ignored).split(SEPARATOR)
}

/// Fits N, R and W to a cluster of this node alone, for each of them no
/// layer set.
fn fit_single_node(config: &mut ServerConfig, user: &Figment) -> Vec<String> {
    if !config.members.is_empty() || !config.cluster.seeds.is_empty() {
        // Listed members, or a cluster to learn from seeds: not a single node.
        return Vec::new();
    }
    let cluster = &mut config.cluster;
    let mut fitted = Vec::new();
    if !user.contains("cluster.n") && cluster.n > 1 {
        cluster.n = 1;
        fitted.push("cluster.n");
    }
    let n = cluster.n;
    if !user.contains("cluster.r") && cluster.r > n {
        cluster.r = n;
        fitted.push("cluster.r");
    }
    if !user.contains("cluster.w") && cluster.w > n {
        cluster.w = n;
        fitted.push("cluster.w");
    }
    if fitted.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "single-node cluster (no [[members]]): {} fitted to one member, N={} R={} W={}",
        fitted.join(", "),
        cluster.n,
        cluster.r,
        cluster.w
    )]
}

/// One line per problem: where (file or variable), which key, what.
fn describe(error: figment::Error) -> String {
    let lines: Vec<String> = error.into_iter().map(|e| describe_one(&e)).collect();
    lines.join("; ")
}

fn describe_one(error: &figment::Error) -> String {
    // figment's path ends with the key at fault, unknown ones included.
    let path = &error.path;
    let what = match &error.kind {
        Kind::UnknownField(_, expected) => {
            format!("unknown key; the keys here are {}", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    let key = path.join(".");
    let Some(metadata) = &error.metadata else { return format!("{key}: {what}") };
    if metadata.name.contains("environment") {
        return format!("environment variable {}: {what}", variables_for(path).join(", "));
    }
    match &metadata.source {
        Some(Source::File(file)) => format!("{}: {key}: {what}", file.display()),
        _ => format!("{key}: {what}"),
    }
}

/// The environment variables that set `path` or a key below it, as they
/// are spelled in the environment.
fn variables_for(path: &[String]) -> Vec<String> {
    let mut found: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with(PREFIX) && !NON_CONFIG_VARIABLES.contains(&name.as_str()))
        .filter(|name| {
            let segments: Vec<String> =
                name[PREFIX.len()..].split(SEPARATOR).map(str::to_ascii_lowercase).collect();
            segments.starts_with(path)
        })
        .collect();
    if found.is_empty() {
        let upper: Vec<String> = path.iter().map(|s| s.to_ascii_uppercase()).collect();
        found.push(format!("{PREFIX}{}", upper.join(SEPARATOR)));
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn documented_non_config_variables_never_stop_a_start() {
        figment::Jail::expect_with(|jail| {
            for name in NON_CONFIG_VARIABLES {
                jail.set_env(name, "1");
            }
            let loaded =
                ServerConfig::load_explained(None, &CliOverrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(loaded.config.cluster.n, 1);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn a_misspelled_variable_is_refused_by_its_name() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DYNAMO_CLUSTR__W", "1");
            jail.set_env("DYNAMO_URL", "http://127.0.0.1:8001");
            let err = ServerConfig::load(None, &CliOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("DYNAMO_CLUSTR__W") && err.contains("unknown key"), "{err}");
            assert!(!err.contains("DYNAMO_URL"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("DYNAMO_CLUSTER__W", "two");
            let err = ServerConfig::load(None, &CliOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("environment variable DYNAMO_CLUSTER__W: invalid type"), "{err}");
            Ok(())
        });
    }

    /// Errors read like the file: `cluster.w`, not figment's
    /// `default.cluster.w`, and the prefix is said once.
    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn file_errors_name_the_file_and_the_key_as_written() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[cluster]\nw = \"two\"\n")?;
            let err = ServerConfig::load(Some(Path::new("bad.toml")), &CliOverrides::default()).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("invalid configuration: "), "{text}");
            assert!(text.contains("bad.toml: cluster.w: invalid type"), "{text}");
            assert!(!text.contains("default."), "{text}");
            jail.create_file("unknown.toml", "[cluster]\nwrite_quorum = 2\n")?;
            let text = ServerConfig::load(Some(Path::new("unknown.toml")), &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(text.contains("unknown.toml: cluster.write_quorum: unknown key"), "{text}");
            jail.create_file("r4.toml", "[cluster]\nr = 4\n")?;
            let text = ServerConfig::load(Some(Path::new("r4.toml")), &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert_eq!(text.matches("invalid configuration").count(), 1, "{text}");
            assert!(text.contains("cluster.r = 4"), "{text}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn no_config_is_a_usable_single_node_and_says_so() {
        figment::Jail::expect_with(|_jail| {
            let loaded =
                ServerConfig::load_explained(None, &CliOverrides::default()).map_err(|e| e.to_string())?;
            let c = &loaded.config.cluster;
            assert_eq!((c.n, c.r, c.w), (1, 1, 1));
            assert_eq!(loaded.notes.len(), 1);
            assert!(loaded.notes[0].contains("N=1 R=1 W=1"), "{:?}", loaded.notes);
            Ok(())
        });
        // An N the user asked for is never fitted: it is refused by name.
        figment::Jail::expect_with(|jail| {
            jail.set_env("DYNAMO_CLUSTER__N", "3");
            let err = ServerConfig::load(None, &CliOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("cluster.n = 3"), "{err}");
            Ok(())
        });
    }

    /// Every `DYNAMO_*` variable the workspace reads is either a
    /// configuration key or listed in [`NON_CONFIG_VARIABLES`]: a new test
    /// variable cannot silently stop `serve` from starting.
    #[test]
    fn every_variable_the_workspace_reads_is_a_key_or_ignored() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let keys: Vec<String> = serde_json::to_value(ServerConfig::default())
            .map(|v| v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default())
            .unwrap_or_default();
        let mut seen = 0;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().to_string();
                if path.is_dir() && !name.starts_with('.') && name != "target" {
                    stack.push(path);
                } else if name.ends_with(".rs") && !path.ends_with("config/load.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (i, _) in text.match_indices("\"DYNAMO_") {
                        let var: String = text[i + 1..]
                            .chars()
                            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                            .collect();
                        // The bare prefix, and the misspelling tests use on purpose.
                        if var == PREFIX || var == "DYNAMO_CLUSTR__W" {
                            continue;
                        }
                        seen += 1;
                        let first = var[PREFIX.len()..].split(SEPARATOR).next().unwrap_or("").to_lowercase();
                        assert!(
                            NON_CONFIG_VARIABLES.contains(&var.as_str()) || keys.contains(&first),
                            "{} reads {var}, which is neither a config key nor in NON_CONFIG_VARIABLES",
                            path.display()
                        );
                    }
                }
            }
        }
        assert!(seen >= 6, "found only {seen} DYNAMO_ variables");
    }
}
