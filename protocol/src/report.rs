//! One line for an error and its causes, as the operator reads it in a
//! device's status or on a terminal.

use std::error::Error;

/// `error`'s message followed by each cause in its `source()` chain that the
/// text so far does not already include (a wrapper that formats its source
/// with `{0}` would otherwise name it twice), separated by ": ".
pub fn report(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("connection reset by peer")]
        Reset,
    }

    #[derive(Debug, thiserror::Error)]
    enum Layer {
        #[error("layer 1")]
        Fetch(#[source] Inner),
        #[error("layer 2: {0}")]
        Echo(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("image sha256:ab")]
    struct Image(#[source] Layer);

    #[test]
    fn every_cause_is_named_once_in_order() {
        assert_eq!(
            report(&Image(Layer::Fetch(Inner::Reset))),
            "image sha256:ab: layer 1: connection reset by peer"
        );
        assert_eq!(
            report(&Image(Layer::Echo(Inner::Reset))),
            "image sha256:ab: layer 2: connection reset by peer"
        );
        assert_eq!(report(&Inner::Reset), "connection reset by peer");
    }
}
