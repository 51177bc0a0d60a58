//! Errors of the storage crate.
//!
//! [`StorageError`] is what every [`LogStore`](crate::LogStore) call and every writer callback
//! returns. It is `Clone` so that one failed group commit can hand the same error to every
//! submitter in the group. The engine's own error types are not exposed: their text is kept,
//! together with the operation that failed, so that the crate's API does not change when redb's
//! does.
//!
//! [`SubmitError`] is what [`LogWriter::try_submit`](crate::LogWriter::try_submit) returns when it
//! cannot take a batch; it hands the batch and its callback back to the caller.

use std::fmt;
use std::path::PathBuf;

use crate::batch::WriteBatch;
use crate::writer::Done;

/// An error from the durable store.
///
/// # Fatal or not
/// [`StorageError::is_fatal`] tells whether the store can still be used. After a failed commit
/// redb refuses further write transactions until the file is closed and reopened, so an
/// [`Engine`](StorageError::Engine) error means the node should stop (or reopen the store).
/// [`InvalidBatch`](StorageError::InvalidBatch) is a caller bug that wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The embedded engine (redb) failed.
    #[error("storage {op} failed: {message}")]
    Engine {
        /// What the store was doing, e.g. `"open"`, `"commit"`, `"read entries"`.
        op: &'static str,
        /// The engine's error text.
        message: String,
    },
    /// A file-system operation outside the engine failed (e.g. creating the data directory).
    #[error("storage {op} failed for {}: {message}", path.display())]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error text.
        message: String,
    },
    /// A [`WriteBatch`] broke one of its documented rules; nothing of it was written.
    #[error("invalid write batch for group {group}: {reason}")]
    InvalidBatch {
        /// The batch's group.
        group: u64,
        /// Which rule was broken.
        reason: String,
    },
    /// The file was written by an incompatible version of this crate.
    #[error("storage file has layout version {found}, this build reads version {expected}")]
    FormatVersion {
        /// The version recorded in the file.
        found: u64,
        /// The version this build writes and reads.
        expected: u64,
    },
    /// Stored data does not have the shape this crate wrote (e.g. a snapshot with missing chunks).
    #[error("corrupt {what} for group {group}: {reason}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The group concerned.
        group: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Code inside the store panicked while handling the request (a bug in redb or here); the
    /// writer thread caught it and reports it instead of dying.
    #[error("storage {op} panicked: {message}")]
    Panicked {
        /// What the store was doing.
        op: &'static str,
        /// The panic payload, when it was a string.
        message: String,
    },
}

impl StorageError {
    /// Wraps an engine error with the operation that produced it.
    pub(crate) fn engine(op: &'static str, err: impl fmt::Display) -> Self {
        StorageError::Engine {
            op,
            message: err.to_string(),
        }
    }

    /// Whether the store must be considered unusable (reopen it or stop the node).
    ///
    /// Engine, IO, format, corruption and panic errors are fatal; an invalid batch is not.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, StorageError::InvalidBatch { .. })
    }
}

/// Returns a closure that wraps an engine error with `op`, for `map_err`.
pub(crate) fn engine<E: fmt::Display>(op: &'static str) -> impl FnOnce(E) -> StorageError {
    move |err| StorageError::engine(op, err)
}

/// Why [`LogWriter::try_submit`](crate::LogWriter::try_submit) did not take a batch.
///
/// Both variants give the batch and its callback back untouched; the callback has not been
/// called.
pub enum SubmitError {
    /// The writer's queue is at capacity. Apply the caller's backpressure policy (retry after a
    /// completion, pause the producer, or fail the request).
    Full(WriteBatch, Done),
    /// The writer has shut down (or its thread died); nothing more will be written.
    Closed(WriteBatch, Done),
}

impl SubmitError {
    /// Takes the batch and callback back out of the error.
    pub fn into_parts(self) -> (WriteBatch, Done) {
        match self {
            SubmitError::Full(batch, done) | SubmitError::Closed(batch, done) => (batch, done),
        }
    }

    /// Whether the queue was full (as opposed to the writer being closed).
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(..))
    }
}

impl fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, batch) = match self {
            SubmitError::Full(batch, _) => ("Full", batch),
            SubmitError::Closed(batch, _) => ("Closed", batch),
        };
        f.debug_struct(name)
            .field("group", &batch.group)
            .field("approx_bytes", &batch.approx_bytes())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(batch, _) => write!(
                f,
                "log writer queue is full (batch for group {})",
                batch.group
            ),
            SubmitError::Closed(batch, _) => {
                write!(f, "log writer is closed (batch for group {})", batch.group)
            }
        }
    }
}

impl std::error::Error for SubmitError {}
