//! The two kinds of step failure the driver tells apart.
//!
//! Every module has its own `thiserror` enum that says what failed, on what, and what to do;
//! at the module's edge it is sorted into one of these two *types*, so that the retry loop
//! cannot burn its attempts on a bad token: only a [`Transient`] is ever retried.

use std::time::Duration;

/// A failure that may go away by itself (5xx, 429, a cut connection, a lost session).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Transient {
    pub message: String,
    /// What the server asked for (`Retry-After`), if anything; the backoff never waits less.
    pub retry_after: Option<Duration>,
}

/// A failure that no retry can fix (bad token, unknown app, an unreadable dump).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Permanent {
    pub message: String,
}

/// What a step returns when it did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Transient(#[from] Transient),
    #[error(transparent)]
    Permanent(#[from] Permanent),
    /// The archive's stream broke while the run streams it (the download cut for good, the
    /// dump cut short): transient, and the next attempt reads the stream again from its start.
    #[error(transparent)]
    StreamCut(Transient),
}

impl StepError {
    pub fn transient(message: impl Into<String>) -> Self {
        StepError::Transient(Transient {
            message: message.into(),
            retry_after: None,
        })
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        StepError::Permanent(Permanent {
            message: message.into(),
        })
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, StepError::Transient(_) | StepError::StreamCut(_))
    }

    /// How the step failed: what the retry policy (`machine::failure_event`) acts on.
    pub fn kind(&self) -> FailureKind {
        match self {
            StepError::Transient(_) => FailureKind::Transient,
            StepError::Permanent(_) => FailureKind::Permanent,
            StepError::StreamCut(_) => FailureKind::StreamCut,
        }
    }

    /// What the server asked for (`Retry-After`), if anything.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StepError::Transient(t) | StepError::StreamCut(t) => t.retry_after,
            StepError::Permanent(_) => None,
        }
    }
}

/// How a step failed. Only a transient failure (or a cut stream, which is one) is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// It may go away by itself: retried after the backoff.
    Transient,
    /// The archive's stream broke while the run streams it: retried, the stream read again
    /// from its start.
    StreamCut,
    /// No retry can fix it: the run fails at once.
    Permanent,
}
