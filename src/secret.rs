//! A string that never shows itself: tokens, bearers, download URLs, passwords.

use std::fmt;

/// Holds a secret. `Debug` and `Display` print `[redacted]`, so a secret that ends up in a
/// log line or an error message by mistake still does not leak; the value is read only with
/// [`Secret::expose`], at the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The byte index, in `text`, of the `)` that closes a parenthesis opened just before it
/// (nested ones counted); `text.len()` when it is never closed.
pub(crate) fn closing_paren(text: &str) -> usize {
    let mut depth = 1usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("tk-us-abcdef");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "tk-us-abcdef");
    }
}

/// `text` without the row data PostgreSQL quotes in its errors: the values of
/// `Key (email)=(someone@example.com)` and of `Failing row contains (...)`, and what follows
/// `DETAIL:`. The column names stay (they say what failed); the values, which are production
/// rows, go. Applied wherever an error leaves the process (the store, `status`, the webhooks,
/// the target's records, the logs).
pub fn redact_row_data(text: &str) -> String {
    const HIDDEN: &str = "[row data redacted]";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let key = rest.find(")=(");
        let failing = rest.find("Failing row contains (");
        let detail = rest.find("DETAIL:");
        // The first of the three markers, and where the hidden part starts.
        let next = [
            key.map(|i| (i, i + 3, true)),
            failing.map(|i| (i, i + "Failing row contains (".len(), true)),
            detail.map(|i| (i, i + "DETAIL:".len(), false)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(i, _, _)| *i);
        let Some((_, start, in_parens)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if in_parens {
            let end = closing_paren(tail);
            out.push_str(HIDDEN);
            rest = &tail[end..];
        } else {
            // To the end of the line.
            let end = tail.find('\n').unwrap_or(tail.len());
            out.push(' ');
            out.push_str(HIDDEN);
            rest = &tail[end..];
        }
    }
}

/// Whether `url` may carry a secret (a token in its query, a webhook's path, a bearer):
/// `https`, or `http` to a loopback host (the tests' fake servers, a local proxy). Plain
/// `http` elsewhere would show it to the network.
pub fn secure_or_loopback(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// A child process started from an empty environment plus `PATH`, the locale (`LANG`,
/// `LC_*`) and `TZ`: no secret of the replicator's (`SCALINGO_API_TOKEN`, `DATABASE_URL`,
/// `NOTIFY_TOKEN`, `NOTIFY_URLS`, ...) and no `PG*` variable reaches it. Every `pg_restore`
/// and `pg_dump` the replicator runs starts here (the `PG*` variables a `pg_dump` needs are
/// set by its caller, one by one).
pub fn child_command(program: &str) -> tokio::process::Command {
    tokio::process::Command::from(child_std_command(program))
}

/// [`child_command`] as a `std` command, for a child spawned off the runtime (a thread of its
/// own).
pub fn child_std_command(program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(allowed_in_children) {
            cmd.env(k, v);
        }
    }
    cmd
}

/// Sets up `cmd`'s child, before it runs, to live and die with the replicator:
///
/// - its own process group: a Ctrl-C on a terminal reaches the replicator, which stops
///   cleanly, and not the child, whose death would look like a failure of its own;
/// - `SIGKILL` when the replicator dies, even by kill -9 (`PR_SET_PDEATHSIG`), and at once if
///   the replicator died before the child was set up.
pub fn bind_to_this_process(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, raise) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// Spawns `cmd`, [bound](bind_to_this_process) to the replicator, for a child that must live
/// as long as the run needs it (pg_restore's translation of the archive). Must be called from
/// within a tokio runtime, whose reactor then watches the child's pipes.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child ends, not the process, and
/// a runtime's threads do end: a worker that waited in `block_in_place` retires to the blocking
/// pool, which ends a thread idle for 10 s. So the fork happens on one thread of its own,
/// started on first use and alive until the process exits.
pub fn spawn_bound(mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    use std::io::Error;
    use std::sync::{OnceLock, mpsc};
    type Reply = mpsc::Sender<std::io::Result<tokio::process::Child>>;
    type Request = (tokio::process::Command, tokio::runtime::Handle, Reply);
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();

    bind_to_this_process(cmd.as_std_mut());
    let runtime = tokio::runtime::Handle::try_current().map_err(Error::other)?;
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            // The child bears this name until it execs.
            .name("spawner".into())
            .spawn(move || {
                for (mut cmd, runtime, reply) in rx {
                    let _in_runtime = runtime.enter();
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let gone = || Error::other("the thread that starts the replicator's children could not start");
    let (reply, answer) = mpsc::channel();
    spawner
        .as_ref()
        .ok_or_else(gone)?
        .send((cmd, runtime, reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// The variables a child inherits ([`child_command`]).
pub fn allowed_in_children(name: &str) -> bool {
    matches!(name, "PATH" | "LANG" | "LANGUAGE" | "TZ") || name.starts_with("LC_")
}

#[cfg(test)]
mod row_data_tests {
    use super::redact_row_data;

    #[test]
    fn row_values_go_and_column_names_stay() {
        let e = "ERROR 23505: duplicate key value violates unique constraint \"users_email_key\" (Key (email)=(ann@example.com) already exists.)";
        let r = redact_row_data(e);
        assert!(!r.contains("ann@example.com"), "{r}");
        assert!(
            r.contains("Key (email)=([row data redacted]) already exists"),
            "{r}"
        );
        let e = "Key (a, b)=(1, f(x)) is not present in table \"t\"; Failing row contains (7, secret, null).";
        let r = redact_row_data(e);
        assert!(!r.contains("secret") && !r.contains("f(x)"), "{r}");
        assert!(r.contains("is not present in table"), "{r}");
        let e = "pg_restore: error: COPY failed\nDETAIL: Key (id)=(5) conflicts\nnext line";
        let r = redact_row_data(e);
        assert!(!r.contains("(5)") && r.contains("next line"), "{r}");
        assert_eq!(redact_row_data("no row data here"), "no row data here");
    }
}

#[cfg(test)]
mod child_tests {
    use super::allowed_in_children;

    #[test]
    fn children_get_path_locale_and_tz_only() {
        for ok in ["PATH", "LANG", "LC_ALL", "LC_MESSAGES", "TZ"] {
            assert!(allowed_in_children(ok), "{ok}");
        }
        for no in [
            "DATABASE_URL",
            "SCALINGO_API_TOKEN",
            "NOTIFY_TOKEN",
            "NOTIFY_URLS",
            "PGPASSWORD",
            "PGSSLMODE",
            "HOME",
        ] {
            assert!(!allowed_in_children(no), "{no}");
        }
    }

    /// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child ends, not the
    /// process. The runtime's threads come and go (a worker that waited in `block_in_place`
    /// retires to the blocking pool, which ends idle threads after 10 s): a `pg_restore`
    /// spawned on one was killed half-way through a run's rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bound_child_outlives_the_thread_that_spawned_it() {
        let handle = tokio::runtime::Handle::current();
        let mut child = std::thread::spawn(move || {
            let _runtime = handle.enter();
            let mut cmd = super::child_command("sleep");
            cmd.arg("30").kill_on_drop(true);
            super::spawn_bound(cmd).expect("sleep starts")
        })
        .join()
        .expect("the spawning thread ends");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let status = child.try_wait().expect("the child's status");
        assert!(
            status.is_none(),
            "the child ended with the thread that spawned it: {status:?}"
        );
        child.kill().await.expect("the child is killed");
    }
}
