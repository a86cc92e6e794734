#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the MQTT topic scheme.

use fleet_protocol::{DeviceId, Topic, TopicKind, TopicScheme};
use proptest::prelude::*;

fn device() -> impl Strategy<Value = DeviceId> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|s| DeviceId::new(s).unwrap())
}

fn kind() -> impl Strategy<Value = TopicKind> {
    prop::sample::select(TopicKind::ALL.to_vec())
}

/// Valid prefixes: 1–4 non-empty levels without wildcards, NUL, control
/// characters or '/', the first not starting with '$'.
fn scheme() -> impl Strategy<Value = TopicScheme> {
    (
        "[^/+#$\\p{Cc}][^/+#\\p{Cc}]{0,7}",
        prop::collection::vec("[^/+#\\p{Cc}]{1,8}", 0..4),
    )
        .prop_map(|(first, rest)| {
            let mut levels = vec![first];
            levels.extend(rest);
            TopicScheme::new(levels.join("/")).unwrap()
        })
}

proptest! {
    #[test]
    fn render_then_parse_is_identity(
        scheme in scheme(),
        kind in kind(),
        device in device(),
        other in device(),
    ) {
        let topic = Topic::new(kind, device.clone());
        let rendered = scheme.render(&topic);
        prop_assert_eq!(scheme.parse(&rendered).unwrap(), topic.clone());
        prop_assert!(rendered.starts_with(scheme.prefix()));
        prop_assert!(!rendered.contains(['+', '#']));

        // The ACL agrees with the topic's direction and owner.
        let uplink = matches!(kind, TopicKind::Status | TopicKind::Telemetry | TopicKind::Online);
        prop_assert_eq!(scheme.device_may_publish(&device, &rendered), uplink);
        prop_assert_eq!(scheme.device_may_subscribe(&device, &rendered), !uplink);
        if other != device {
            prop_assert!(!scheme.device_may_publish(&other, &rendered));
            prop_assert!(!scheme.device_may_subscribe(&other, &rendered));
        }
    }

    #[test]
    fn the_default_scheme_round_trips_too(kind in kind(), device in device()) {
        let scheme = TopicScheme::default();
        let topic = Topic::new(kind, device);
        prop_assert_eq!(scheme.parse(&scheme.render(&topic)).unwrap(), topic);
    }

    #[test]
    fn arbitrary_strings_never_panic(scheme in scheme(), s in "\\PC{0,80}") {
        if let Ok(topic) = scheme.parse(&s) {
            prop_assert_eq!(scheme.render(&topic), s.clone());
        }
        if let Ok(parsed) = TopicScheme::new(s.clone()) {
            prop_assert_eq!(parsed.prefix(), s);
        }
    }

    #[test]
    fn topic_like_strings_never_panic(s in "(fleet/v1/d/)?[a-z0-9/+#._-]{0,30}") {
        let scheme = TopicScheme::default();
        if let Ok(topic) = scheme.parse(&s) {
            prop_assert_eq!(scheme.render(&topic), s);
        }
    }
}
