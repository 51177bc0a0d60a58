//! Log output: `tracing` as text or JSON, or Mosquitto's `<unix seconds>: <message>` lines.
//!
//! The broker emits the lines an operator knows from Mosquitto under the target `mqtt` with
//! Mosquitto's exact wording, plus structured fields. In the `mosquitto` format only those lines
//! are printed (and warnings and errors of other components, prefixed as Mosquitto does);
//! the other formats print every event with its fields.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Mosquitto's line format.
struct MosquittoFormat;

struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    message_only: bool,
    result: fmt::Result,
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            write!(self.out, "{value:?}")
        } else if self.message_only {
            Ok(())
        } else {
            write!(self.out, " {}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" || self.message_only {
            self.record_debug(field, &format_args!("{value}"));
        } else if self.result.is_ok() {
            self.result = write!(self.out, " {}={value}", field.name());
        }
    }
}

impl<S, N> FormatEvent<S, N> for MosquittoFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mqtt = meta.target() == "mqtt";
        if !mqtt && *meta.level() > Level::WARN {
            return Ok(());
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        write!(out, "{secs}: ")?;
        if !mqtt {
            write!(
                out,
                "{}: ",
                if *meta.level() == Level::ERROR {
                    "Error"
                } else {
                    "Warning"
                }
            )?;
        }
        let mut v = Fields {
            out: &mut out,
            message_only: mqtt,
            result: Ok(()),
        };
        event.record(&mut v);
        v.result?;
        writeln!(out)
    }
}

/// Installs the global subscriber.
///
/// # Errors
/// The level is not a valid filter.
pub(crate) fn init(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.level)
        .map_err(|e| format!("log level {:?}: {e}", config.level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Mosquitto => builder.event_format(MosquittoFormat).try_init(),
    };
    result.map_err(|e| e.to_string())
}
