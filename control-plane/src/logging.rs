//! The server's logs: `tracing` on stderr, human or JSON, filtered by
//! `RUST_LOG` (default: info, and warnings of the embedded broker).
//!
//! Colour only when stderr is a terminal: a log file or a pipe gets plain
//! text.
//!
//! The embedded broker (rumqttd 0.20) logs two normal events at ERROR:
//! `router-drop error=Recv(Disconnected)` whenever a client disconnects,
//! and `no-connection id N is already gone` when a connection closes twice
//! over (at every start, for the server's own link). Those two, matched
//! exactly by target, message and error, are treated as DEBUG: shown only
//! when `RUST_LOG` asks for debug output. Every other broker error (TLS,
//! refused connections, a router that stops) stays an ERROR. A filter on the
//! event's content is the only way: rumqttd's targets mix these with real
//! errors, so a per-target level would hide those too.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,rumqttd=warn";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Installs the process's logger (once, at start).
pub fn init(format: Format) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let noise = BrokerNoise {
        show: filter
            .max_level_hint()
            .is_some_and(|l| l >= LevelFilter::DEBUG),
    };
    // sled's trace level prints every key it reads, the hashes of API tokens
    // among them: it stays at debug whatever RUST_LOG says of all crates.
    if filter.max_level_hint() == Some(LevelFilter::TRACE)
        && let Ok(cap) = "sled=debug".parse()
    {
        filter = filter.add_directive(cap);
    }
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        Format::Human => layer
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(noise)
            .boxed(),
        Format::Json => layer.json().with_filter(noise).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
}

/// Drops the embedded broker's ERROR events that are not errors (see the
/// module documentation) unless `show` (debug output asked for).
#[derive(Debug, Clone, Copy)]
pub struct BrokerNoise {
    pub show: bool,
}

impl<S: Subscriber> Filter<S> for BrokerNoise {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        self.show || !is_broker_noise(event)
    }
}

/// Whether `event` is one of the two normal events rumqttd logs at ERROR.
pub fn is_broker_noise(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    if *meta.level() != Level::ERROR || !meta.target().starts_with("rumqttd::") {
        return false;
    }
    let mut fields = Fields::default();
    event.record(&mut fields);
    noise(meta.target(), &fields.message, fields.error.as_deref())
}

/// The matching rule, on the event's target, message and `error` field.
fn noise(target: &str, message: &str, error: Option<&str>) -> bool {
    match target {
        "rumqttd::server::broker" => {
            message == "router-drop" && error == Some("Recv(Disconnected)")
        }
        "rumqttd::router::routing" => message
            .strip_prefix("no-connection id ")
            .and_then(|rest| rest.strip_suffix(" is already gone"))
            .is_some_and(|id| id.parse::<u64>().is_ok()),
        _ => false,
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    error: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = Some(format!("{value:?}")),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "error" => self.error = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::noise;

    #[test]
    fn only_the_two_normal_broker_events_are_noise() {
        let broker = "rumqttd::server::broker";
        let routing = "rumqttd::router::routing";
        assert!(noise(broker, "router-drop", Some("Recv(Disconnected)")));
        assert!(noise(routing, "no-connection id 0 is already gone", None));
        assert!(noise(
            routing,
            "no-connection id 4711 is already gone",
            None
        ));
        // Real errors stay errors.
        assert!(!noise(broker, "router-drop", Some("Send(Full)")));
        assert!(!noise(
            broker,
            "Tls accept error",
            Some("Recv(Disconnected)")
        ));
        assert!(!noise(broker, "disconnected", Some("Recv(Disconnected)")));
        assert!(!noise(routing, "no space for new connection", None));
        assert!(!noise(routing, "no-connection id x is already gone", None));
        assert!(!noise("other", "router-drop", Some("Recv(Disconnected)")));
    }
}
