//! The settings of the commands that restore (`run`, `daemon`, `check`, `resume`, `restore`),
//! validated in one place. [`Settings::read`] validates every setting a command uses and keeps
//! every problem; [`EngineConfig::from_args`] is that, whole, or every problem at once. `check`
//! prints the same problems as its `FAIL` lines, so that it can never say ok where a run stops
//! with exit 2.

use std::time::Duration;

use clap::Args;

use super::{
    ConfigError, ConfigErrors, RestoreArgs, RestoreConfig, RetryArgs, RetryConfig, ScalingoArgs,
    ScalingoConfig, SourceArgs, TargetArgs, parse_number,
};
use crate::machine::Origin;
use crate::replica::PgEndpoint;
use crate::secret::Secret;
use crate::source::scalingo::ScalingoClient;

/// What every command that restores reads.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub scalingo: ScalingoArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub restore: RestoreArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// A newest done backup older than this many hours is not the night's yet: wait for it
    /// (transient failure, retried)
    #[arg(long, env = "MAX_BACKUP_AGE_HOURS")]
    pub max_backup_age_hours: Option<String>,
    /// Seconds a download may receive nothing before the attempt is given up (and resumed
    /// with `Range`): a server that stops sending must not hang the night
    #[arg(long, env = "DOWNLOAD_IDLE_TIMEOUT_SECONDS", default_value = "60")]
    pub download_idle_timeout_seconds: String,
}

/// The read timeout of downloads when no `DOWNLOAD_IDLE_TIMEOUT_SECONDS` applies (`restore`
/// downloads nothing; its HTTP client only notifies).
pub const DEFAULT_DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which of Scalingo's settings a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wants {
    /// `run`, `daemon`, `check`, and `resume` of a run that restores a Scalingo backup:
    /// Scalingo's settings, unless `SOURCE_DATABASE_URL` names a live source (then they are
    /// not read).
    Backups,
    /// `resume` of a run from a live source or a file: Scalingo's settings are not read.
    NoScalingo,
}

/// Every setting of a command that restores, each validated (`None` when it is not, or not
/// used), and every problem. `check` reads it to go on with what is valid; the other commands
/// take [`EngineConfig::from_args`].
#[derive(Debug, Default)]
pub struct Settings {
    pub target: Option<PgEndpoint>,
    /// The live source, `SOURCE_DATABASE_URL`.
    pub source: Option<PgEndpoint>,
    /// `SOURCE_DATABASE_URL` is set (even to something invalid): runs copy a live database,
    /// and Scalingo's settings are not read.
    pub live: bool,
    pub scalingo: Option<ScalingoConfig>,
    pub restore: Option<RestoreConfig>,
    pub retry: Option<RetryConfig>,
    /// `MAX_BACKUP_AGE_HOURS` (`None`: no limit, or invalid).
    pub max_backup_age: Option<Duration>,
    pub download_idle_timeout: Option<Duration>,
    pub errors: ConfigErrors,
}

impl Settings {
    /// Every setting of `args` that a command wanting `wants` uses.
    pub fn read(args: &EngineArgs, wants: Wants) -> Settings {
        let mut s = Settings::read_file(&args.target, &args.restore, &args.retry);
        let errors = &mut s.errors;
        s.live = args
            .source
            .source_database_url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty());
        s.source = errors
            .take(args.source.validate(args.scalingo.app.as_deref()))
            .flatten()
            .and_then(|url| errors.take(parse_source(&url)));
        if wants == Wants::Backups && !s.live {
            s.scalingo = errors.take(args.scalingo.validate());
        }
        s.max_backup_age = errors
            .take(max_backup_age(args.max_backup_age_hours.as_deref()))
            .flatten();
        s.download_idle_timeout = errors
            .take(parse_number(
                &args.download_idle_timeout_seconds,
                "DOWNLOAD_IDLE_TIMEOUT_SECONDS",
                1,
                3600,
            ))
            .map(Duration::from_secs);
        s
    }

    /// The settings of `restore` (a file on disk): the target, the restore, the retries; no
    /// Scalingo, no live source, no backup age, nothing downloaded.
    pub fn read_file(target: &TargetArgs, restore: &RestoreArgs, retry: &RetryArgs) -> Settings {
        let mut errors = ConfigErrors::default();
        let target = errors
            .take(target.validate())
            .and_then(|url| errors.take(parse_target(&url)))
            .map(|t| t.confirmed(target.target_confirm.clone()));
        Settings {
            target,
            restore: errors.take(restore.validate()),
            retry: errors.take(retry.validate()),
            download_idle_timeout: Some(DEFAULT_DOWNLOAD_IDLE_TIMEOUT),
            errors,
            ..Settings::default()
        }
    }

    /// The configuration, when every setting is valid; else every problem.
    pub fn config(self) -> Result<EngineConfig, ConfigErrors> {
        let Settings {
            target,
            source,
            scalingo,
            restore,
            retry,
            max_backup_age,
            download_idle_timeout,
            errors,
            ..
        } = self;
        errors.or(|| EngineConfig {
            target: target.expect("no error"),
            source,
            restore: restore.expect("no error"),
            retry: retry.expect("no error"),
            scalingo: scalingo.map(|s| ScalingoClient::new(s.endpoints, s.app, s.api_token)),
            max_backup_age,
            download_idle_timeout: download_idle_timeout.expect("no error"),
        })
    }
}

/// `MAX_BACKUP_AGE_HOURS` (`None`: no limit).
fn max_backup_age(hours: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    Ok(hours
        .filter(|v| !v.trim().is_empty())
        .map(|v| parse_number(v, "MAX_BACKUP_AGE_HOURS", 1, 24 * 365))
        .transpose()?
        .map(|h| Duration::from_secs(h * 3600)))
}

/// What a command that restores needs, validated.
pub struct EngineConfig {
    pub target: PgEndpoint,
    /// `SOURCE_DATABASE_URL`: runs copy this live database instead of a Scalingo backup.
    pub source: Option<PgEndpoint>,
    pub restore: RestoreConfig,
    pub retry: RetryConfig,
    /// `None` for a restore from a file, or a live source.
    pub scalingo: Option<ScalingoClient>,
    pub max_backup_age: Option<Duration>,
    pub download_idle_timeout: Duration,
}

impl EngineConfig {
    /// The configuration of `run`, `daemon`, `check` and `resume` ([`Settings::read`]), or
    /// every problem at once.
    pub fn from_args(args: &EngineArgs, wants: Wants) -> Result<EngineConfig, ConfigErrors> {
        Settings::read(args, wants).config()
    }

    /// The configuration of `restore` ([`Settings::read_file`]), or every problem at once.
    pub fn for_file(
        target: &TargetArgs,
        restore: &RestoreArgs,
        retry: &RetryArgs,
    ) -> Result<EngineConfig, ConfigErrors> {
        Settings::read_file(target, restore, retry).config()
    }

    /// Where a new run's dump comes from ([`origin_of`]).
    pub fn origin(&self) -> Origin {
        origin_of(self.source.as_ref())
    }
}

/// Where a new run's dump comes from: the live source when one is set (named without its
/// password), else Scalingo.
pub fn origin_of(source: Option<&PgEndpoint>) -> Origin {
    match source {
        Some(source) => Origin::Live {
            source: source.describe(),
        },
        None => Origin::Scalingo,
    }
}

/// The target of `DATABASE_URL`; a URL it cannot use is a configuration error (the URL may
/// hold a password: it is never repeated).
pub fn parse_target(url: &Secret) -> Result<PgEndpoint, ConfigError> {
    PgEndpoint::parse(url).map_err(invalid_url("DATABASE_URL"))
}

/// The live source of `SOURCE_DATABASE_URL`, by the rules of `DATABASE_URL`; a URL it cannot
/// use is a configuration error (never repeated: it may hold a password).
pub fn parse_source(url: &Secret) -> Result<PgEndpoint, ConfigError> {
    PgEndpoint::parse_source(url).map_err(invalid_url("SOURCE_DATABASE_URL"))
}

/// The configuration error of a database URL in `var` that cannot be used, without the URL.
fn invalid_url<E: std::fmt::Display>(var: &'static str) -> impl FnOnce(E) -> ConfigError {
    move |e| ConfigError::Invalid {
        var,
        value: "(hidden)".into(),
        expected: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid configuration of a run from Scalingo.
    fn valid() -> EngineArgs {
        EngineArgs {
            scalingo: ScalingoArgs {
                app: Some("my-app".into()),
                region: "osc-fr1".into(),
                api_token: Some("tk-us-x".into()),
                auth_url: None,
                api_url: None,
                db_url: None,
            },
            source: SourceArgs {
                source_database_url: None,
            },
            target: TargetArgs {
                database_url: Some("postgres://u:p@127.0.0.1:5432/replica".into()),
                target_confirm: None,
            },
            restore: RestoreArgs {
                use_unlogged_tables: false,
                pg_restore_jobs: "4".into(),
                fk_mode: "trust".into(),
                refresh_mode: None,
                exclude_table_data: None,
                restore_schemas: None,
                post_restore_sql: None,
                replica_rules: None,
                masking_key: None,
                max_work_disk: None,
                notify_urls: None,
                notify_token: None,
            },
            retry: RetryArgs {
                max_retry_count: "10".into(),
                retry_initial_delay_seconds: "60".into(),
                retry_max_delay_seconds: "900".into(),
                retries_timeout_minutes: "180".into(),
            },
            max_backup_age_hours: None,
            download_idle_timeout_seconds: "60".into(),
        }
    }

    fn vars(errors: &ConfigErrors) -> Vec<&'static str> {
        errors
            .0
            .iter()
            .map(|e| match e {
                ConfigError::Missing { var, .. }
                | ConfigError::Invalid { var, .. }
                | ConfigError::Conflict { var, .. } => *var,
            })
            .collect()
    }

    fn errors(args: &EngineArgs, wants: Wants) -> Vec<&'static str> {
        match EngineConfig::from_args(args, wants) {
            Ok(_) => Vec::new(),
            Err(e) => vars(&e),
        }
    }

    #[test]
    fn every_problem_is_returned_at_once() {
        assert_eq!(errors(&valid(), Wants::Backups), Vec::<&str>::new());
        let mut args = valid();
        args.restore.pg_restore_jobs = "0".into();
        args.restore.fk_mode = "sometimes".into();
        args.retry.max_retry_count = "many".into();
        args.retry.retry_max_delay_seconds = "1".into();
        args.max_backup_age_hours = Some("0".into());
        args.download_idle_timeout_seconds = "0".into();
        assert_eq!(
            errors(&args, Wants::Backups),
            [
                "PG_RESTORE_JOBS",
                "FK_MODE",
                "RETRY_MAX_DELAY_SECONDS",
                "MAX_RETRY_COUNT",
                "MAX_BACKUP_AGE_HOURS",
                "DOWNLOAD_IDLE_TIMEOUT_SECONDS"
            ]
        );
        let text = EngineConfig::from_args(&args, Wants::Backups)
            .err()
            .expect("invalid")
            .to_string();
        assert!(text.starts_with("6 settings are invalid: "), "{text}");
        assert!(
            text.contains("DOWNLOAD_IDLE_TIMEOUT_SECONDS=\"0\" is invalid"),
            "{text}"
        );
        // One problem is said as itself.
        let mut args = valid();
        args.download_idle_timeout_seconds = "3601".into();
        let text = EngineConfig::from_args(&args, Wants::Backups)
            .err()
            .expect("invalid")
            .to_string();
        assert!(text.starts_with("DOWNLOAD_IDLE_TIMEOUT_SECONDS="), "{text}");
    }

    #[test]
    fn scalingo_is_read_only_when_the_command_restores_its_backups() {
        let mut args = valid();
        args.scalingo.app = None;
        args.scalingo.api_token = None;
        assert_eq!(
            errors(&args, Wants::Backups),
            ["SCALINGO_APP", "SCALINGO_API_TOKEN"]
        );
        assert_eq!(errors(&args, Wants::NoScalingo), Vec::<&str>::new());
        // A live source replaces Scalingo; set with SCALINGO_APP, the two are refused.
        args.source.source_database_url = Some("postgres://u:p@10.0.0.1:5432/prod".into());
        let config = EngineConfig::from_args(&args, Wants::Backups).expect("live");
        assert!(config.scalingo.is_none() && config.source.is_some());
        args.scalingo.app = Some("my-app".into());
        assert_eq!(errors(&args, Wants::Backups), ["SOURCE_DATABASE_URL"]);
        // Without a target, the target is said with the rest; the password never is.
        let mut args = valid();
        args.target.database_url = Some("postgres://u:hunter2@/replica?sslmode=sometimes".into());
        args.restore.fk_mode = "x".into();
        let e = EngineConfig::from_args(&args, Wants::Backups)
            .err()
            .expect("invalid");
        assert_eq!(vars(&e), ["DATABASE_URL", "FK_MODE"]);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_restore_from_a_file_reads_no_scalingo_and_no_download_setting() {
        let mut args = valid();
        args.scalingo.app = None;
        args.download_idle_timeout_seconds = "0".into();
        let config =
            EngineConfig::for_file(&args.target, &args.restore, &args.retry).expect("valid");
        assert_eq!(config.download_idle_timeout, DEFAULT_DOWNLOAD_IDLE_TIMEOUT);
        args.retry.retries_timeout_minutes = "0".into();
        let e = EngineConfig::for_file(&args.target, &args.restore, &args.retry)
            .err()
            .expect("invalid");
        assert_eq!(vars(&e), ["RETRIES_TIMEOUT_MINUTES"]);
    }
}
