//! raft-rs logs through slog; this drain hands each record to `tracing`
//! under the target `raft`, with raft-rs's key-values as one `fields` string,
//! so `RUST_LOG=raft=debug` filters them like the rest of the agent's logs.

use std::fmt::Write as _;

struct Drain;

struct Kv(String);

impl slog::Serializer for Kv {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

impl slog::Drain for Drain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        use slog::KV as _;
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::Level::ERROR,
            slog::Level::Warning => tracing::Level::WARN,
            slog::Level::Info => tracing::Level::INFO,
            slog::Level::Debug => tracing::Level::DEBUG,
            slog::Level::Trace => tracing::Level::TRACE,
        };
        // raft-rs logs a lot at debug level: skip formatting what nobody listens to.
        if !enabled(level) {
            return Ok(());
        }
        let mut kv = Kv(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let fields = kv.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", fields = %fields, "{msg}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", fields = %fields, "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", fields = %fields, "{msg}"),
            slog::Level::Debug => tracing::debug!(target: "raft", fields = %fields, "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", fields = %fields, "{msg}"),
        }
        Ok(())
    }
}

fn enabled(level: tracing::Level) -> bool {
    match level {
        tracing::Level::ERROR => tracing::enabled!(target: "raft", tracing::Level::ERROR),
        tracing::Level::WARN => tracing::enabled!(target: "raft", tracing::Level::WARN),
        tracing::Level::INFO => tracing::enabled!(target: "raft", tracing::Level::INFO),
        tracing::Level::DEBUG => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
        _ => tracing::enabled!(target: "raft", tracing::Level::TRACE),
    }
}

/// The logger to give `RawNode::new`.
pub fn logger() -> slog::Logger {
    slog::Logger::root(Drain, slog::o!())
}
