//! How a step failed, as the driver sees it.
//!
//! Every module has its own `thiserror` enum that says what failed, on what, and what to do;
//! each says of itself how it failed ([`Classify`], written next to its variants). A
//! [`StepError`] keeps that typed error whole on its way to the driver, which asks its
//! [`FailureKind`] once (`machine::failure_event`): the retry loop cannot burn its attempts
//! on a bad token, since only a transient failure (or a cut stream) is ever retried.

use std::fmt;
use std::time::Duration;

/// How a step failed. Only a transient failure (or a cut stream, which is one) is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// It may go away by itself (5xx, 429, a cut connection, a lost session): retried after
    /// the backoff.
    Transient,
    /// The archive's stream broke while the run streams it (the download cut for good, the
    /// dump cut short): retried, the stream read again from its start.
    StreamCut,
    /// No retry can fix it (bad token, unknown app, an unreadable dump): the run fails at
    /// once.
    Permanent,
}

/// A module's error that says how it failed. Implemented by each module's error type, next to
/// its variants: the one place where a variant is sorted.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> FailureKind;
    /// What the server asked for (`Retry-After`), if anything; the backoff never waits less.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// What a step returns when it did not succeed: the module's typed error, unflattened (its
/// message is its `Display`, unchanged).
pub struct StepError(Box<dyn Classify>);

impl StepError {
    /// A failure the step describes itself (no module error says it).
    pub fn transient(message: impl Into<String>) -> Self {
        Message::new(FailureKind::Transient, message).into()
    }

    /// A failure no retry can fix, described by the step itself.
    pub fn permanent(message: impl Into<String>) -> Self {
        Message::new(FailureKind::Permanent, message).into()
    }

    /// `error` with `context` before its message (`<context><error>`: the context ends with
    /// its separator), of `error`'s kind.
    pub fn context(context: impl Into<String>, error: impl Classify) -> Self {
        StepError(Box::new(Context {
            context: context.into(),
            inner: Box::new(error),
        }))
    }

    /// How the step failed.
    pub fn kind(&self) -> FailureKind {
        self.0.kind()
    }

    pub fn is_transient(&self) -> bool {
        self.kind() != FailureKind::Permanent
    }

    /// What the server asked for (`Retry-After`), if anything.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after()
    }

    /// The typed error, if it is an `E` (a test's, or a caller's that acts on one variant).
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let typed: &(dyn std::error::Error + 'static) = &*self.0;
        typed.downcast_ref::<E>()
    }
}

impl<E: Classify> From<E> for StepError {
    fn from(e: E) -> StepError {
        StepError(Box::new(e))
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: ", self.kind())?;
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A step's own words, of a kind it says.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct Message {
    kind: FailureKind,
    text: String,
}

impl Message {
    pub fn new(kind: FailureKind, text: impl Into<String>) -> Message {
        Message {
            kind,
            text: text.into(),
        }
    }
}

impl Classify for Message {
    fn kind(&self) -> FailureKind {
        self.kind
    }
}

/// A typed error with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{context}{inner}")]
struct Context {
    context: String,
    inner: Box<dyn Classify>,
}

impl Classify for Context {
    fn kind(&self) -> FailureKind {
        self.inner.kind()
    }
    fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Fetch {
        #[error("HTTP 429 from the API: retry later")]
        Busy,
        #[error("the token was refused: check it")]
        BadToken,
    }

    impl Classify for Fetch {
        fn kind(&self) -> FailureKind {
            match self {
                Fetch::Busy => FailureKind::Transient,
                Fetch::BadToken => FailureKind::Permanent,
            }
        }
        fn retry_after(&self) -> Option<Duration> {
            matches!(self, Fetch::Busy).then(|| Duration::from_secs(7))
        }
    }

    #[test]
    fn the_typed_error_reaches_the_driver_whole_and_says_its_kind() {
        let e = StepError::from(Fetch::Busy);
        assert_eq!(e.kind(), FailureKind::Transient);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.to_string(), "HTTP 429 from the API: retry later");
        assert!(matches!(e.downcast_ref::<Fetch>(), Some(Fetch::Busy)));
        let e = StepError::from(Fetch::BadToken);
        assert!(!e.is_transient());
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn a_context_keeps_the_kind_and_the_words_of_what_it_wraps() {
        let e = StepError::context("the restore would fail on t: ", Fetch::Busy);
        assert_eq!(e.kind(), FailureKind::Transient);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            e.to_string(),
            "the restore would fail on t: HTTP 429 from the API: retry later"
        );
        let e = StepError::context("while checking: ", Fetch::BadToken);
        assert_eq!(e.kind(), FailureKind::Permanent);
        assert_eq!(StepError::transient("x").kind(), FailureKind::Transient);
        assert_eq!(StepError::permanent("y").to_string(), "y");
    }
}
