//! Where log lines go and how they look: stderr (colours only on a terminal), optionally a log
//! file that logrotate can have reopened, as text or as one JSON object per line.

mod file;

pub use file::LogFile;

use crate::config::LogFormat;
use std::io::IsTerminal;
use std::sync::Arc;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the process's log subscriber: the `SLUICE_LOG` filter (default `info`), lines to
/// stderr and, when given, to `file`, in `format`. Called once, by the binary.
pub fn init(format: LogFormat, file: Option<Arc<LogFile>>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: never in a file, a pipe or the journal.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut layers = vec![layer(format, colour, std::io::stderr)];
    if let Some(file) = file {
        layers.push(layer(format, false, file));
    }
    tracing_subscriber::registry().with(filter).with(layers).init();
}

/// One output: a formatting layer writing to `writer`.
fn layer<S, W>(format: LogFormat, colour: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    match format {
        LogFormat::Text => base.with_ansi(colour).boxed(),
        LogFormat::Json => base.json().with_ansi(false).flatten_event(true).boxed(),
    }
}
