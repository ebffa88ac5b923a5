//! Configuration: the environment (and the flags that override it) turned into typed values.
//!
//! Every variable is read through `clap`'s `env` support, so `--help` lists each one with its
//! default and a flag always wins over its variable. Values are validated here, before anything
//! is touched, and every error names the variable to fix. A command gets every problem of its
//! configuration at once ([`ConfigErrors`]), not the first: the settings of the commands that
//! restore are validated in one place, [`engine::EngineConfig::from_args`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::secret::Secret;
use crate::source::scalingo::Endpoints;

pub mod engine;

pub use engine::{EngineArgs, EngineConfig, Settings, Wants};

/// A configuration value that is missing or invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is not set: {hint}")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    #[error("{var}={value:?} is invalid: {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    #[error("{var} and {other} are both set: {hint}")]
    Conflict {
        var: &'static str,
        other: &'static str,
        hint: &'static str,
    },
}

/// Every problem of a configuration, in the order the settings are read; never empty when
/// returned as an error.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            all => {
                write!(f, "{} settings are invalid: ", all.len())?;
                for (i, e) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl ConfigErrors {
    /// The value of `result`, or `None` with its problems kept.
    pub fn take<T, E: Into<ConfigErrors>>(&mut self, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.extend(e.into().0);
                None
            }
        }
    }

    /// `value` when no problem was kept, else every problem.
    pub fn or<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

/// Where the replicator keeps its state (the sled store, the lock, the working files).
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// Directory of the state store, the run lock and the downloaded files
    /// [default: $XDG_STATE_HOME/replicator, else $HOME/.local/state/replicator]
    #[arg(long, env = "REPLICATOR_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    pub fn dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("replicator");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".local/state/replicator");
        }
        PathBuf::from("replicator-state")
    }
}

/// How to reach Scalingo.
#[derive(Args, Debug, Clone)]
pub struct ScalingoArgs {
    /// Name of the Scalingo app whose PostgreSQL backups are replicated
    #[arg(long = "app", env = "SCALINGO_APP")]
    pub app: Option<String>,
    /// Scalingo region of the app (osc-fr1, osc-secnum-fr1, ...)
    #[arg(long = "region", env = "SCALINGO_REGION", default_value = "osc-fr1")]
    pub region: String,
    /// Scalingo API token (tk-us-...); never printed; environment only (the flag is refused:
    /// a command line is visible to every user)
    #[arg(long = "api-token", env = "SCALINGO_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Origin of Scalingo's auth API [default: https://auth.scalingo.com]
    #[arg(long = "auth-url", env = "SCALINGO_AUTH_URL")]
    pub auth_url: Option<String>,
    /// Origin of Scalingo's API [default: https://api.{region}.scalingo.com]
    #[arg(long = "api-url", env = "SCALINGO_API_URL")]
    pub api_url: Option<String>,
    /// Origin of Scalingo's database API [default: https://db-api.{region}.scalingo.com]
    #[arg(long = "db-url", env = "SCALINGO_DB_URL")]
    pub db_url: Option<String>,
}

/// The target database.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// URL of the target database (postgres://user:password@host:port/db); wiped and
    /// replaced by each run; never printed; environment only (the flag is refused)
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The target database's name, to allow the first wipe of a database that holds objects
    /// and no record of an earlier run of the replicator
    #[arg(long = "target-confirm", env = "REPLICATOR_TARGET_CONFIRM")]
    pub target_confirm: Option<String>,
}

/// A live database as the source, instead of Scalingo's backups.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// URL of a live database to copy instead of a Scalingo app's backups
    /// (postgres://user:password@host:port/db): each run streams a `pg_dump` of it (one
    /// snapshot, nothing on disk) into the target; never printed; environment only (the flag
    /// is refused)
    #[arg(
        long = "source-database-url",
        env = "SOURCE_DATABASE_URL",
        hide_env_values = true
    )]
    pub source_database_url: Option<String>,
}

impl SourceArgs {
    /// `SOURCE_DATABASE_URL` (`None`: unset or empty, runs copy Scalingo's backups). Set with
    /// `SCALINGO_APP` (`scalingo_app`) too, it is refused: which one a run would copy must not
    /// be a guess.
    pub fn validate(&self, scalingo_app: Option<&str>) -> Result<Option<Secret>, ConfigError> {
        let Some(url) = self
            .source_database_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        if scalingo_app.is_some_and(|a| !a.trim().is_empty()) {
            return Err(ConfigError::Conflict {
                var: "SOURCE_DATABASE_URL",
                other: "SCALINGO_APP",
                hint: "a run copies either a live database (SOURCE_DATABASE_URL) or a Scalingo app's backups (SCALINGO_APP), not both; unset the one you do not mean",
            });
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                var: "SOURCE_DATABASE_URL",
                // The URL may hold a password: show its scheme only.
                value: url.split(':').next().unwrap_or("").to_string() + ":...",
                expected: "a URL starting with postgres:// or postgresql://".into(),
            });
        }
        Ok(Some(Secret::new(url)))
    }
}

/// How the restore is done.
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// `true` to create tables UNLOGGED (no WAL: faster, but emptied by a server crash)
    #[arg(long, env = "USE_UNLOGGED_TABLES", default_value = "false", value_parser = parse_bool_flag, action = clap::ArgAction::Set)]
    pub use_unlogged_tables: bool,
    /// Parallel jobs of pg_restore (--jobs)
    #[arg(long, env = "PG_RESTORE_JOBS", default_value = "4")]
    pub pg_restore_jobs: String,
    /// Foreign keys: `trust` (added NOT VALID after the rows: enforced for new rows, no scan),
    /// `validate` (as the source has them: a full scan each) or `skip` (none)
    #[arg(long, env = "FK_MODE", default_value = "trust")]
    pub fk_mode: String,
    /// How tonight's copy replaces yesterday's: `swap` (built beside it under other schema
    /// names, switched in one transaction: readers never see an empty or partial replica) or
    /// `wipe` (dropped first: needs room for one copy only). Unset: swap where the target
    /// allows it, else wipe (said)
    #[arg(long, env = "REFRESH_MODE")]
    pub refresh_mode: Option<String>,
    /// Tables whose rows are not restored (comma-separated exact names, `knowledge-elements`
    /// or `"Quoted, name"`): they exist, empty, with their indexes and constraints
    #[arg(long, env = "EXCLUDE_TABLE_DATA")]
    pub exclude_table_data: Option<String>,
    /// Only these schemas are restored (comma-separated names; default: every schema of the
    /// dump). Refused before anything is touched if a restored object needs one left out
    #[arg(long, env = "RESTORE_SCHEMAS")]
    pub restore_schemas: Option<String>,
    /// A .sql file, or a directory whose .sql files run in name order, against the target after
    /// the restore and before Done; each file in one transaction, all re-run on resume
    #[arg(long, env = "POST_RESTORE_SQL")]
    pub post_restore_sql: Option<PathBuf>,
    /// A TOML file of masking rules and row filters applied to the rows on their way to the
    /// target (docs/masking.md); checked against the dump before the wipe
    #[arg(long, env = "REPLICA_RULES")]
    pub replica_rules: Option<PathBuf>,
    /// The key of REPLICA_RULES' pseudonyms (same key, same pseudonyms), at least 128 bits
    /// (`replicator rules key` prints one); needed by keyed rules; never printed; environment
    /// only (the flag is refused)
    #[arg(long, env = "MASKING_KEY", hide_env_values = true)]
    pub masking_key: Option<String>,
    /// Most disk the run's working files may use, with units (`64MiB`, `20GB`). A backup that
    /// fits is downloaded and checked whole before the wipe; one that does not streams
    /// (docs/operations.md). Default: 90% of the state directory's free space
    #[arg(long, env = "MAX_WORK_DISK")]
    pub max_work_disk: Option<String>,
    /// Comma-separated https URLs (http only to loopback) that get a JSON POST when a run ends
    /// (Done or Failed); environment only (the flag is refused: a webhook URL is a secret)
    #[arg(long, env = "NOTIFY_URLS", hide_env_values = true)]
    pub notify_urls: Option<String>,
    /// Sent to NOTIFY_URLS as `Authorization: Bearer ...`; never printed; environment only
    /// (the flag is refused)
    #[arg(long, env = "NOTIFY_TOKEN", hide_env_values = true)]
    pub notify_token: Option<String>,
}

/// How failures are retried.
#[derive(Args, Debug, Clone)]
pub struct RetryArgs {
    /// Retries after the first attempt before a run is given up
    #[arg(long, env = "MAX_RETRY_COUNT", default_value = "10")]
    pub max_retry_count: String,
    /// Wait before the first retry, in seconds (doubles at each retry)
    #[arg(long, env = "RETRY_INITIAL_DELAY_SECONDS", default_value = "60")]
    pub retry_initial_delay_seconds: String,
    /// Longest wait between two retries, in seconds
    #[arg(long, env = "RETRY_MAX_DELAY_SECONDS", default_value = "900")]
    pub retry_max_delay_seconds: String,
    /// Log one warning once a run has been retrying for longer than this, in minutes
    #[arg(long, env = "RETRIES_TIMEOUT_MINUTES", default_value = "180")]
    pub retries_timeout_minutes: String,
}

pub(crate) fn parse_bool_flag(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected `true` or `false`".to_string()),
    }
}

/// Scalingo settings, validated.
#[derive(Clone, Debug)]
pub struct ScalingoConfig {
    pub app: String,
    pub region: String,
    pub api_token: Secret,
    pub endpoints: Endpoints,
}

/// Restore settings, validated.
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    pub use_unlogged_tables: bool,
    pub jobs: u32,
    /// `FK_MODE`.
    pub fk_mode: crate::replica::fk::FkMode,
    /// Tables whose rows are left out (`EXCLUDE_TABLE_DATA`).
    pub exclude_table_data: Vec<String>,
    /// `RESTORE_SCHEMAS`: only these schemas (`None`: every schema of the dump).
    pub restore_schemas: Option<Vec<String>>,
    /// `POST_RESTORE_SQL`, checked to name at least one .sql file.
    pub post_restore_sql: Option<PathBuf>,
    pub notify: crate::notify::NotifyConfig,
    /// `REPLICA_RULES`, parsed.
    pub rules: Option<std::sync::Arc<crate::masking::RulesFile>>,
    /// `MASKING_KEY`, at least 128 bits; `None` only when no rule is keyed.
    pub masking_key: Option<crate::masking::MaskingKey>,
    /// `MAX_WORK_DISK` in bytes; `None`: derived from the free space.
    pub max_work_disk: Option<u64>,
    /// `REFRESH_MODE`; `None`: swap where the target allows it, else wipe.
    pub refresh_mode: Option<crate::dump::plan::RefreshMode>,
}

/// Retry settings, validated.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub max_retry_count: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
}

impl ScalingoArgs {
    /// Every Scalingo setting, every problem at once.
    pub fn validate(&self) -> Result<ScalingoConfig, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let app = errors.take(non_empty(
            self.app.as_deref(),
            "SCALINGO_APP",
            "set it to the name of the Scalingo app whose database is replicated (or pass --app)",
        ));
        let api_token = errors.take(non_empty(
            self.api_token.as_deref(),
            "SCALINGO_API_TOKEN",
            "create a token in Scalingo's dashboard (User settings > API tokens) and set it",
        ));
        let region = self.region.trim().to_string();
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            errors.0.push(ConfigError::Invalid {
                var: "SCALINGO_REGION",
                value: self.region.clone(),
                expected: "a Scalingo region such as osc-fr1 or osc-secnum-fr1".into(),
            });
        }
        for (var, value) in [
            ("SCALINGO_AUTH_URL", &self.auth_url),
            ("SCALINGO_API_URL", &self.api_url),
            ("SCALINGO_DB_URL", &self.db_url),
        ] {
            if let Some(v) = value {
                let secure =
                    reqwest::Url::parse(v).is_ok_and(|u| crate::secret::secure_or_loopback(&u));
                if !secure {
                    errors.0.push(ConfigError::Invalid {
                        var,
                        value: v.clone(),
                        expected: "an https:// origin such as https://api.osc-fr1.scalingo.com (no path); http:// only to a loopback host (127.0.0.1, ::1, localhost)".into(),
                    });
                }
            }
        }
        errors.or(|| ScalingoConfig {
            endpoints: Endpoints::for_region(
                &region,
                self.auth_url.clone(),
                self.api_url.clone(),
                self.db_url.clone(),
            ),
            app: app.expect("no error"),
            region: region.clone(),
            api_token: Secret::new(api_token.expect("no error")),
        })
    }
}

impl TargetArgs {
    pub fn validate(&self) -> Result<Secret, ConfigError> {
        let url = non_empty(
            self.database_url.as_deref(),
            "DATABASE_URL",
            "set it to the target database's URL, postgres://user:password@host:port/db",
        )?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                // The URL may hold a password: show its scheme only.
                value: url.split(':').next().unwrap_or("").to_string() + ":...",
                expected: "a URL starting with postgres:// or postgresql://".into(),
            });
        }
        Ok(Secret::new(url))
    }
}

impl RestoreArgs {
    /// Every restore setting, every problem at once.
    pub fn validate(&self) -> Result<RestoreConfig, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let exclude_table_data = match self.exclude_table_data.as_deref() {
            Some(v) => errors.take(crate::dump::toc::parse_table_list(v).map_err(|expected| {
                ConfigError::Invalid {
                    var: "EXCLUDE_TABLE_DATA",
                    value: v.to_string(),
                    expected: format!(
                        "comma-separated table names (bare like knowledge-elements, or double-quoted): {expected}"
                    ),
                }
            })),
            None => Some(Vec::new()),
        };
        let restore_schemas = match self.restore_schemas.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => errors
                .take(crate::dump::toc::parse_table_list(v).map_err(|expected| {
                    ConfigError::Invalid {
                        var: "RESTORE_SCHEMAS",
                        value: v.to_string(),
                        expected: format!(
                            "comma-separated schema names (bare like public, or double-quoted): {expected}"
                        ),
                    }
                }))
                .map(Some),
            _ => Some(None),
        };
        let post_restore_sql = match &self.post_restore_sql {
            Some(p) if !p.as_os_str().is_empty() => errors
                .take(crate::replica::post_restore::sql_files(p).map_err(|e| {
                    ConfigError::Invalid {
                        var: "POST_RESTORE_SQL",
                        value: p.display().to_string(),
                        expected: format!("it {}", e.reason()),
                    }
                }))
                // The phase may run from another working directory (the daemon, a resume).
                .map(|_| Some(std::path::absolute(p).unwrap_or_else(|_| p.clone()))),
            _ => Some(None),
        };
        let urls = match self.notify_urls.as_deref() {
            Some(v) => errors.take(crate::notify::parse_urls(v).map_err(|expected| {
                ConfigError::Invalid {
                    var: "NOTIFY_URLS",
                    // URLs may hold a webhook secret in their path.
                    value: "(hidden)".into(),
                    expected: format!("comma-separated http:// or https:// URLs: {expected}"),
                }
            })),
            None => Some(Vec::new()),
        };
        let token = self
            .notify_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        let rules = match &self.replica_rules {
            Some(p) if !p.as_os_str().is_empty() => errors
                .take(
                    crate::masking::RulesFile::load(p).map_err(|e| ConfigError::Invalid {
                        var: "REPLICA_RULES",
                        value: p.display().to_string(),
                        expected: format!("a rules file (docs/masking.md): {e}"),
                    }),
                )
                .map(|rules| Some(std::sync::Arc::new(rules))),
            _ => Some(None),
        };
        let masking_key = errors
            .take(
                crate::masking::key::run_key(
                    rules.as_ref().and_then(|r| r.as_deref()),
                    self.masking_key.as_deref(),
                )
                .map_err(|expected| ConfigError::Invalid {
                    var: "MASKING_KEY",
                    value: if self.masking_key.as_deref().is_some_and(|k| !k.is_empty()) {
                        "(hidden)".into()
                    } else {
                        "(not set)".into()
                    },
                    expected,
                }),
            )
            .flatten();
        let max_work_disk = match self.max_work_disk.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => errors
                .take(parse_bytes(v).filter(|n| *n >= MIN_WORK_DISK).ok_or_else(|| {
                    ConfigError::Invalid {
                        var: "MAX_WORK_DISK",
                        value: v.to_string(),
                        expected: "a size of at least 16MiB, with a unit: 64MiB, 20GB, 2GiB (kB/MB/GB/TB count by 1000, KiB/MiB/GiB/TiB by 1024; a bare number is bytes)".to_string(),
                    }
                }))
                .map(Some),
            _ => Some(None),
        };
        let refresh_mode = errors.take(match self.refresh_mode.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some("swap") => Ok(Some(crate::dump::plan::RefreshMode::Swap)),
            Some("wipe") => Ok(Some(crate::dump::plan::RefreshMode::Wipe)),
            Some(other) => Err(ConfigError::Invalid {
                var: "REFRESH_MODE",
                value: other.to_string(),
                expected: "swap or wipe".into(),
            }),
        });
        let jobs = errors.take(parse_number(
            &self.pg_restore_jobs,
            "PG_RESTORE_JOBS",
            1,
            64,
        ));
        let fk_mode = errors.take(
            self.fk_mode
                .parse()
                .map_err(|expected| ConfigError::Invalid {
                    var: "FK_MODE",
                    value: self.fk_mode.clone(),
                    expected,
                }),
        );
        errors.or(|| RestoreConfig {
            refresh_mode: refresh_mode.expect("no error"),
            max_work_disk: max_work_disk.expect("no error"),
            rules: rules.expect("no error"),
            masking_key,
            exclude_table_data: exclude_table_data.expect("no error"),
            restore_schemas: restore_schemas.expect("no error"),
            post_restore_sql: post_restore_sql.expect("no error"),
            notify: crate::notify::NotifyConfig {
                urls: urls.expect("no error"),
                token,
            },
            use_unlogged_tables: self.use_unlogged_tables,
            jobs: jobs.expect("no error") as u32,
            fk_mode: fk_mode.expect("no error"),
        })
    }
}

impl RetryArgs {
    /// Every retry setting, every problem at once.
    pub fn validate(&self) -> Result<RetryConfig, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let initial = errors.take(parse_number(
            &self.retry_initial_delay_seconds,
            "RETRY_INITIAL_DELAY_SECONDS",
            0,
            86_400,
        ));
        let max = errors.take(parse_number(
            &self.retry_max_delay_seconds,
            "RETRY_MAX_DELAY_SECONDS",
            0,
            86_400,
        ));
        if let (Some(initial), Some(max)) = (initial, max)
            && max < initial
        {
            errors.0.push(ConfigError::Invalid {
                var: "RETRY_MAX_DELAY_SECONDS",
                value: self.retry_max_delay_seconds.clone(),
                expected: format!(
                    "at least RETRY_INITIAL_DELAY_SECONDS ({initial}): it caps the doubling waits"
                ),
            });
        }
        let count = errors.take(parse_number(
            &self.max_retry_count,
            "MAX_RETRY_COUNT",
            0,
            1000,
        ));
        let timeout = errors.take(parse_number(
            &self.retries_timeout_minutes,
            "RETRIES_TIMEOUT_MINUTES",
            1,
            100_000,
        ));
        errors.or(|| RetryConfig {
            max_retry_count: count.expect("no error") as u32,
            initial_delay: Duration::from_secs(initial.expect("no error")),
            max_delay: Duration::from_secs(max.expect("no error")),
            timeout: Duration::from_secs(60 * timeout.expect("no error")),
        })
    }
}

fn non_empty(
    value: Option<&str>,
    var: &'static str,
    hint: &'static str,
) -> Result<String, ConfigError> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(ConfigError::Missing { var, hint }),
    }
}

/// The smallest `MAX_WORK_DISK` ([`crate::machine::MIN_WORK_DISK`]).
pub use crate::machine::MIN_WORK_DISK;

/// `64MiB`, `20GB`, `1.5GiB`, `1048576`: bytes (`None` if not a size).
pub fn parse_bytes(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = (v[..split].trim(), v[split..].trim());
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000_u64.pow(2),
        "gb" | "g" => 1000_u64.pow(3),
        "tb" | "t" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = n * scale as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Numbers are kept as strings by clap so that a bad value gets a message naming its
/// variable and its range, rather than clap's generic one naming the flag.
pub fn parse_number(
    value: &str,
    var: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            var,
            value: value.to_string(),
            expected: format!("a whole number from {min} to {max}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(count: &str) -> RetryArgs {
        RetryArgs {
            max_retry_count: count.into(),
            retry_initial_delay_seconds: "60".into(),
            retry_max_delay_seconds: "900".into(),
            retries_timeout_minutes: "180".into(),
        }
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("20GB"), Some(20_000_000_000));
        assert_eq!(parse_bytes("1.5 GiB"), Some(3 << 29));
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("64 mib"), Some(64 << 20));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("12PB"), None);
        assert_eq!(parse_bytes(""), None);
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        let err = retry("ten").validate().unwrap_err().to_string();
        assert!(err.contains("MAX_RETRY_COUNT"), "{err}");
        assert!(err.contains("whole number"), "{err}");
        assert_eq!(retry("3").validate().unwrap().max_retry_count, 3);
    }

    #[test]
    fn missing_token_names_its_variable_and_never_shows_the_url() {
        let args = ScalingoArgs {
            app: Some("pix".into()),
            region: "osc-fr1".into(),
            api_token: None,
            auth_url: None,
            api_url: None,
            db_url: None,
        };
        assert!(
            args.validate()
                .unwrap_err()
                .to_string()
                .contains("SCALINGO_API_TOKEN")
        );
        let target = TargetArgs {
            database_url: Some("mysql://u:hunter2@h/db".into()),
            target_confirm: None,
        };
        let err = target.validate().unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_URL") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn a_live_source_with_a_scalingo_app_is_refused_and_its_url_never_shown() {
        let source = |url: &str| SourceArgs {
            source_database_url: Some(url.into()),
        };
        let err = source("postgres://u:hunter2@h/db")
            .validate(Some("my-app"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SOURCE_DATABASE_URL and SCALINGO_APP are both set")
                && !err.contains("hunter2"),
            "{err}"
        );
        let err = source("mysql://u:hunter2@h/db")
            .validate(None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SOURCE_DATABASE_URL") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(
            source("postgres://u:p@h/db")
                .validate(None)
                .unwrap()
                .is_some()
        );
        assert!(source(" ").validate(Some("my-app")).unwrap().is_none());
    }
}
