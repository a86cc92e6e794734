//! The MQTT topic scheme. This is the only place topic strings are built or
//! parsed.
//!
//! | topic                        | direction       | QoS | retained |
//! |------------------------------|-----------------|-----|----------|
//! | `{prefix}/d/{device}/desired`   | server → device | 1 | yes |
//! | `{prefix}/d/{device}/status`    | device → server | 1 | yes |
//! | `{prefix}/d/{device}/telemetry` | device → server | 0 | no  |
//! | `{prefix}/d/{device}/online`    | device → server | 1 | yes (last will = offline) |
//! | `{prefix}/d/{device}/cmd`       | server → device | 1 | no  |
//!
//! The prefix defaults to `fleet/v1`. Per-device ACL: a device subscribes only
//! to its own `desired` and `cmd`, and publishes only its own `status`,
//! `telemetry` and `online`. The device id is the MQTT client id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{DeviceId, IdError};

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "fleet/v1";
/// Longest accepted prefix, in bytes.
pub const PREFIX_MAX_LEN: usize = 256;

/// Why a prefix or a topic was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic prefix {prefix:?} is invalid: {reason}")]
    BadPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("topic {topic:?} is not under prefix {prefix:?}")]
    ForeignPrefix { topic: String, prefix: String },
    #[error("topic {topic:?} is not of the form {{prefix}}/d/{{device}}/{{kind}}")]
    Malformed { topic: String },
    #[error("topic {topic:?} has unknown kind {kind:?}")]
    UnknownKind { topic: String, kind: String },
    #[error("topic {topic:?} names an invalid device")]
    BadDevice {
        topic: String,
        #[source]
        source: IdError,
    },
}

/// Which way a topic's messages flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ServerToDevice,
    DeviceToServer,
}

/// The MQTT quality of service of a topic. Fleet uses no QoS 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    /// QoS 0: sent once, lost while offline (telemetry).
    AtMostOnce,
    /// QoS 1: kept until the broker acknowledges it.
    AtLeastOnce,
}

impl Qos {
    /// The level on the wire (0 or 1).
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
        }
    }
}

/// How one kind of topic is published: its QoS and whether it is retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    pub qos: Qos,
    pub retain: bool,
}

/// One message to publish, as the MQTT client needs it: the topic string
/// with the QoS and retain flag of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub topic: String,
    pub qos: Qos,
    pub retain: bool,
}

/// One topic filter to subscribe to, with the QoS of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    pub qos: Qos,
}

/// The kind of a per-device topic (its last level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    Desired,
    Status,
    Telemetry,
    Online,
    Cmd,
}

impl TopicKind {
    pub const ALL: [TopicKind; 5] = [
        TopicKind::Desired,
        TopicKind::Status,
        TopicKind::Telemetry,
        TopicKind::Online,
        TopicKind::Cmd,
    ];

    /// The topic level, e.g. `desired`.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Desired => "desired",
            TopicKind::Status => "status",
            TopicKind::Telemetry => "telemetry",
            TopicKind::Online => "online",
            TopicKind::Cmd => "cmd",
        }
    }

    fn from_level(level: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == level)
    }

    /// How messages on this topic are published and subscribed to: the
    /// design's topic table, in one place.
    pub fn delivery(self) -> Delivery {
        let (qos, retain) = match self {
            TopicKind::Desired | TopicKind::Status | TopicKind::Online => (Qos::AtLeastOnce, true),
            TopicKind::Cmd => (Qos::AtLeastOnce, false),
            TopicKind::Telemetry => (Qos::AtMostOnce, false),
        };
        Delivery { qos, retain }
    }

    /// The MQTT QoS level (0 or 1) messages on this topic are published with.
    pub fn qos(self) -> u8 {
        self.delivery().qos.level()
    }

    /// Whether messages on this topic are published retained.
    pub fn retained(self) -> bool {
        self.delivery().retain
    }

    pub fn direction(self) -> Direction {
        match self {
            TopicKind::Desired | TopicKind::Cmd => Direction::ServerToDevice,
            TopicKind::Status | TopicKind::Telemetry | TopicKind::Online => {
                Direction::DeviceToServer
            }
        }
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One per-device topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Server → device: the signed `DesiredState`.
    Desired(DeviceId),
    /// Device → server: `StatusReport`.
    Status(DeviceId),
    /// Device → server: `Telemetry`.
    Telemetry(DeviceId),
    /// Device → server: presence (last will = offline).
    Online(DeviceId),
    /// Server → device: a signed `Command`.
    Cmd(DeviceId),
}

impl Topic {
    pub fn new(kind: TopicKind, device: DeviceId) -> Self {
        match kind {
            TopicKind::Desired => Topic::Desired(device),
            TopicKind::Status => Topic::Status(device),
            TopicKind::Telemetry => Topic::Telemetry(device),
            TopicKind::Online => Topic::Online(device),
            TopicKind::Cmd => Topic::Cmd(device),
        }
    }

    pub fn device(&self) -> &DeviceId {
        match self {
            Topic::Desired(d)
            | Topic::Status(d)
            | Topic::Telemetry(d)
            | Topic::Online(d)
            | Topic::Cmd(d) => d,
        }
    }

    pub fn kind(&self) -> TopicKind {
        match self {
            Topic::Desired(_) => TopicKind::Desired,
            Topic::Status(_) => TopicKind::Status,
            Topic::Telemetry(_) => TopicKind::Telemetry,
            Topic::Online(_) => TopicKind::Online,
            Topic::Cmd(_) => TopicKind::Cmd,
        }
    }

    pub fn delivery(&self) -> Delivery {
        self.kind().delivery()
    }

    pub fn qos(&self) -> u8 {
        self.kind().qos()
    }

    pub fn retained(&self) -> bool {
        self.kind().retained()
    }

    pub fn direction(&self) -> Direction {
        self.kind().direction()
    }
}

/// The topic namespace of one deployment: `{prefix}/d/{device}/{kind}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicScheme {
    prefix: String,
}

impl Default for TopicScheme {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl TopicScheme {
    /// Validates `prefix`: non-empty, no wildcards (`+`, `#`), no
    /// empty level (leading, trailing or double `/`), not starting with `$`
    /// (reserved by brokers), no control character, at most [`PREFIX_MAX_LEN`] bytes.
    pub fn new(prefix: impl Into<String>) -> Result<Self, TopicError> {
        let prefix = prefix.into();
        let reason = if prefix.is_empty() {
            Some("it is empty")
        } else if prefix.len() > PREFIX_MAX_LEN {
            Some("it is longer than 256 bytes")
        } else if prefix.contains(['+', '#']) {
            Some("it contains an MQTT wildcard ('+' or '#')")
        } else if prefix.chars().any(char::is_control) {
            Some("it contains a control character")
        } else if prefix.split('/').any(str::is_empty) {
            Some("it has an empty level")
        } else if prefix.starts_with('$') {
            Some("it starts with '$', which brokers reserve")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(TopicError::BadPrefix { prefix, reason }),
            None => Ok(Self { prefix }),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic string, e.g. `fleet/v1/d/cam-01/desired`.
    pub fn render(&self, topic: &Topic) -> String {
        format!("{}/d/{}/{}", self.prefix, topic.device(), topic.kind())
    }

    /// Parses a topic of this scheme.
    pub fn parse(&self, topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix("/"))
            .ok_or_else(|| TopicError::ForeignPrefix {
                topic: topic.to_owned(),
                prefix: self.prefix.clone(),
            })?;
        let malformed = || TopicError::Malformed {
            topic: topic.to_owned(),
        };
        let rest = rest.strip_prefix("d/").ok_or_else(malformed)?;
        let (device, kind) = rest.split_once('/').ok_or_else(malformed)?;
        if kind.contains('/') {
            return Err(malformed());
        }
        let kind = TopicKind::from_level(kind).ok_or_else(|| TopicError::UnknownKind {
            topic: topic.to_owned(),
            kind: kind.to_owned(),
        })?;
        let device = DeviceId::new(device).map_err(|source| TopicError::BadDevice {
            topic: topic.to_owned(),
            source,
        })?;
        Ok(Topic::new(kind, device))
    }

    /// What to publish `topic` as: its topic string, QoS and retain flag.
    /// Both sides publish only through this (and [`Self::last_will`]).
    pub fn publication(&self, topic: &Topic) -> Publication {
        let Delivery { qos, retain } = topic.delivery();
        Publication {
            topic: self.render(topic),
            qos,
            retain,
        }
    }

    /// The last will a device registers: its `online` topic, whose delivery
    /// (QoS 1, retained) carries the `offline` presence when it vanishes.
    pub fn last_will(&self, device: &DeviceId) -> Publication {
        self.publication(&Topic::Online(device.clone()))
    }

    /// The filter matching `kind` for every device, e.g. `fleet/v1/d/+/status`.
    pub fn filter_all(&self, kind: TopicKind) -> String {
        format!("{}/d/+/{}", self.prefix, kind)
    }

    /// The same filter as a shared subscription (`$share/{group}/…`), so that
    /// several servers split the devices' messages between them.
    pub fn shared_filter_all(&self, group: &str, kind: TopicKind) -> String {
        format!("$share/{group}/{}", self.filter_all(kind))
    }

    /// What the server subscribes to: every device's status, telemetry and
    /// online topics, each with the QoS its kind is published with.
    pub fn server_subscriptions(&self) -> Vec<Subscription> {
        TopicKind::ALL
            .into_iter()
            .filter(|k| k.direction() == Direction::DeviceToServer)
            .map(|k| Subscription {
                filter: self.filter_all(k),
                qos: k.delivery().qos,
            })
            .collect()
    }

    /// What a device subscribes to: its own desired and cmd topics, each with
    /// the QoS its kind is published with.
    pub fn device_subscriptions(&self, device: &DeviceId) -> Vec<Subscription> {
        TopicKind::ALL
            .into_iter()
            .filter(|k| k.direction() == Direction::ServerToDevice)
            .map(|k| Subscription {
                filter: self.render(&Topic::new(k, device.clone())),
                qos: k.delivery().qos,
            })
            .collect()
    }

    /// The ACL for publishing: a device may publish only its own status,
    /// telemetry and online topics (exact topic names, never wildcards).
    pub fn device_may_publish(&self, device: &DeviceId, topic: &str) -> bool {
        self.parse(topic)
            .is_ok_and(|t| t.device() == device && t.direction() == Direction::DeviceToServer)
    }

    /// The ACL for subscribing: a device may subscribe only to its own desired
    /// and cmd topics. Filters with wildcards are refused, even when every
    /// topic they match would be allowed, so the rule stays obvious.
    pub fn device_may_subscribe(&self, device: &DeviceId, filter: &str) -> bool {
        !filter.contains(['+', '#'])
            && self
                .parse(filter)
                .is_ok_and(|t| t.device() == device && t.direction() == Direction::ServerToDevice)
    }

    /// The per-device ACL as Mosquitto `acl_file` pattern lines (`%c` is the
    /// client id, which is the device id). The server's own account needs its
    /// own `user` section on top of these.
    pub fn mosquitto_acl_patterns(&self) -> String {
        let mut out = String::new();
        for kind in TopicKind::ALL {
            let access = match kind.direction() {
                Direction::ServerToDevice => "read",
                Direction::DeviceToServer => "write",
            };
            out.push_str(&format!("pattern {access} {}/d/%c/{kind}\n", self.prefix));
        }
        out
    }
}

impl fmt::Display for TopicScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl FromStr for TopicScheme {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::new(s)
    }
}

/// Serialised as the prefix string (for config files).
impl Serialize for TopicScheme {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.prefix)
    }
}

impl<'de> Deserialize<'de> for TopicScheme {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn topics_render_as_in_the_design() {
        let s = TopicScheme::default();
        let d = dev("cam-01");
        assert_eq!(
            s.render(&Topic::Desired(d.clone())),
            "fleet/v1/d/cam-01/desired"
        );
        assert_eq!(
            s.render(&Topic::Status(d.clone())),
            "fleet/v1/d/cam-01/status"
        );
        assert_eq!(
            s.render(&Topic::Telemetry(d.clone())),
            "fleet/v1/d/cam-01/telemetry"
        );
        assert_eq!(
            s.render(&Topic::Online(d.clone())),
            "fleet/v1/d/cam-01/online"
        );
        assert_eq!(s.render(&Topic::Cmd(d.clone())), "fleet/v1/d/cam-01/cmd");
        assert_eq!(s.filter_all(TopicKind::Status), "fleet/v1/d/+/status");
        assert_eq!(
            s.shared_filter_all("servers", TopicKind::Telemetry),
            "$share/servers/fleet/v1/d/+/telemetry"
        );
    }

    #[test]
    fn qos_and_retain_follow_the_design_table() {
        let expected = [
            (TopicKind::Desired, 1, true, Direction::ServerToDevice),
            (TopicKind::Status, 1, true, Direction::DeviceToServer),
            (TopicKind::Telemetry, 0, false, Direction::DeviceToServer),
            (TopicKind::Online, 1, true, Direction::DeviceToServer),
            (TopicKind::Cmd, 1, false, Direction::ServerToDevice),
        ];
        for (kind, qos, retained, direction) in expected {
            let t = Topic::new(kind, dev("a"));
            assert_eq!(t.qos(), qos, "{kind}");
            assert_eq!(t.retained(), retained, "{kind}");
            assert_eq!(t.direction(), direction, "{kind}");
        }
    }

    #[test]
    fn subscriptions_cover_each_side() {
        let s = TopicScheme::new("acme/fleet").unwrap();
        let pairs = |subs: Vec<Subscription>| -> Vec<(String, u8)> {
            subs.into_iter()
                .map(|s| (s.filter, s.qos.level()))
                .collect()
        };
        assert_eq!(
            pairs(s.server_subscriptions()),
            vec![
                ("acme/fleet/d/+/status".to_owned(), 1),
                ("acme/fleet/d/+/telemetry".to_owned(), 0),
                ("acme/fleet/d/+/online".to_owned(), 1),
            ]
        );
        assert_eq!(
            pairs(s.device_subscriptions(&dev("gw-7"))),
            vec![
                ("acme/fleet/d/gw-7/desired".to_owned(), 1),
                ("acme/fleet/d/gw-7/cmd".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn publications_carry_the_delivery_of_their_kind() {
        let s = TopicScheme::new("acme/fleet").unwrap();
        let d = dev("gw-7");
        let table = [
            (Topic::Desired(d.clone()), Qos::AtLeastOnce, true),
            (Topic::Status(d.clone()), Qos::AtLeastOnce, true),
            (Topic::Telemetry(d.clone()), Qos::AtMostOnce, false),
            (Topic::Online(d.clone()), Qos::AtLeastOnce, true),
            (Topic::Cmd(d.clone()), Qos::AtLeastOnce, false),
        ];
        for (topic, qos, retain) in table {
            let p = s.publication(&topic);
            assert_eq!(p.topic, s.render(&topic));
            assert_eq!((p.qos, p.retain), (qos, retain), "{}", topic.kind());
        }
        assert_eq!(s.last_will(&d), s.publication(&Topic::Online(d.clone())));
        // A subscriber asks for the QoS the publisher uses.
        for sub in s
            .server_subscriptions()
            .into_iter()
            .chain(s.device_subscriptions(&d))
        {
            let kind = sub.filter.rsplit('/').next().unwrap();
            let kind = TopicKind::from_level(kind).unwrap();
            assert_eq!(sub.qos, kind.delivery().qos, "{kind}");
        }
    }

    #[test]
    fn parse_rejects_foreign_malformed_and_unknown_topics() {
        let s = TopicScheme::default();
        let bad = [
            ("other/v1/d/a/status", "foreign"),
            ("fleet/v1", "foreign"),
            ("fleet/v1x/d/a/status", "foreign"),
            ("fleet/v2/d/a/status", "foreign"),
            ("fleet/v1/x/a/status", "malformed"),
            ("fleet/v1/d/a", "malformed"),
            ("fleet/v1/d/a/status/extra", "malformed"),
            ("fleet/v1/d/a/state", "kind"),
            ("fleet/v1/d/a/", "kind"),
            ("fleet/v1/d/+/status", "device"),
            ("fleet/v1/d//status", "device"),
            ("fleet/v1/d/A/status", "device"),
        ];
        for (topic, expected) in bad {
            let got = match s.parse(topic) {
                Ok(t) => panic!("{topic:?} parsed as {t:?}"),
                Err(TopicError::ForeignPrefix { .. }) => "foreign",
                Err(TopicError::Malformed { .. }) => "malformed",
                Err(TopicError::UnknownKind { .. }) => "kind",
                Err(TopicError::BadDevice { .. }) => "device",
                Err(TopicError::BadPrefix { .. }) => "prefix",
            };
            assert_eq!(got, expected, "{topic:?}");
        }
        assert_eq!(
            s.parse("fleet/v1/d/cam-01/status").unwrap(),
            Topic::Status(dev("cam-01"))
        );
    }

    #[test]
    fn prefixes_without_wildcards_or_empty_levels_are_accepted() {
        for ok in ["fleet/v1", "a", "acme corp/fleet", "x/y/z"] {
            assert!(TopicScheme::new(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "/fleet",
            "fleet/",
            "fleet//v1",
            "fleet/+",
            "fleet/#",
            "$SYS",
            "a\0b",
            "a\nb",
        ] {
            assert!(
                matches!(TopicScheme::new(bad), Err(TopicError::BadPrefix { .. })),
                "{bad:?}"
            );
        }
        assert!(TopicScheme::new("a".repeat(257)).is_err());
        let s: TopicScheme = serde_json::from_str("\"acme/v1\"").unwrap();
        assert_eq!(s.prefix(), "acme/v1");
        assert!(serde_json::from_str::<TopicScheme>("\"acme/#\"").is_err());
    }

    #[test]
    fn a_device_publishes_only_its_own_uplink_topics() {
        let s = TopicScheme::default();
        let me = dev("cam-01");
        assert!(s.device_may_publish(&me, "fleet/v1/d/cam-01/status"));
        assert!(s.device_may_publish(&me, "fleet/v1/d/cam-01/telemetry"));
        assert!(s.device_may_publish(&me, "fleet/v1/d/cam-01/online"));
        assert!(!s.device_may_publish(&me, "fleet/v1/d/cam-01/desired"));
        assert!(!s.device_may_publish(&me, "fleet/v1/d/cam-01/cmd"));
        assert!(!s.device_may_publish(&me, "fleet/v1/d/cam-02/status"));
        assert!(!s.device_may_publish(&me, "fleet/v1/d/+/status"));
        assert!(!s.device_may_publish(&me, "other/d/cam-01/status"));
    }

    #[test]
    fn a_device_subscribes_only_to_its_own_downlink_topics() {
        let s = TopicScheme::default();
        let me = dev("cam-01");
        assert!(s.device_may_subscribe(&me, "fleet/v1/d/cam-01/desired"));
        assert!(s.device_may_subscribe(&me, "fleet/v1/d/cam-01/cmd"));
        for bad in [
            "fleet/v1/d/cam-01/status",
            "fleet/v1/d/cam-02/desired",
            "fleet/v1/d/+/desired",
            "fleet/v1/d/cam-01/#",
            "fleet/v1/d/cam-01/+",
            "fleet/v1/#",
            "#",
        ] {
            assert!(!s.device_may_subscribe(&me, bad), "{bad:?}");
        }
    }

    #[test]
    fn mosquitto_acl_patterns_encode_the_same_rules() {
        assert_eq!(
            TopicScheme::default().mosquitto_acl_patterns(),
            "pattern read fleet/v1/d/%c/desired\n\
             pattern write fleet/v1/d/%c/status\n\
             pattern write fleet/v1/d/%c/telemetry\n\
             pattern write fleet/v1/d/%c/online\n\
             pattern read fleet/v1/d/%c/cmd\n"
        );
    }
}
