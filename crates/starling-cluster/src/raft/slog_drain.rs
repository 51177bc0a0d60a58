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
