//! raft-rs logs through `slog`; this drain forwards its records to `tracing` (target `raft`),
//! keeping every key-value, including the logger's context (`raft_id`).

use std::fmt::{self, Write as _};

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

/// Forwards slog records to tracing.
pub(crate) struct TracingDrain;

struct Collect(String);

impl Serializer for Collect {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // raft-rs logs every message it sends at debug level: format nothing nobody reads (it
        // cost about a tenth of a node's instructions).
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            slog::Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            slog::Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
            slog::Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            slog::Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = Collect(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", kv = %kv.0, "{msg}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", kv = %kv.0, "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", kv = %kv.0, "{msg}"),
            slog::Level::Debug => tracing::debug!(target: "raft", kv = %kv.0, "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", kv = %kv.0, "{msg}"),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs.
pub(crate) fn logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("node" => node_id))
}
