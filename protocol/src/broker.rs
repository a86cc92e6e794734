//! The MQTT broker address shared by the agent and the server
//! (`mqtt://host:port`, `tcp://host:port`, `host[:port]`, `[v6]:port`).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerAddrError {
    #[error("invalid broker address {addr:?}: {reason}")]
    Bad { addr: String, reason: &'static str },
    #[error("MQTT over TLS (mqtts://) is not supported yet: {addr}")]
    TlsUnsupported { addr: String },
}

/// Where the broker is: `mqtt://host:port` or `host:port` (port 1883 when
/// left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
}

impl BrokerAddr {
    pub fn parse(addr: &str) -> Result<Self, BrokerAddrError> {
        let bad = |reason| BrokerAddrError::Bad {
            addr: addr.to_owned(),
            reason,
        };
        if addr.starts_with("mqtts://") || addr.starts_with("ssl://") {
            return Err(BrokerAddrError::TlsUnsupported {
                addr: addr.to_owned(),
            });
        }
        let rest = addr
            .strip_prefix("mqtt://")
            .or_else(|| addr.strip_prefix("tcp://"))
            .unwrap_or(addr);
        if rest.contains("://") {
            return Err(bad("unknown scheme"));
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(b) = rest.strip_prefix('[') {
            let (h, after) = b.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (h, None),
                a => (
                    h,
                    Some(a.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("port is not a number"))?,
            None => 1883,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// `mqtt://host:port`, with an IPv6 host in brackets: what [`BrokerAddr::parse`] reads back.
impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for BrokerAddr {
    type Err = BrokerAddrError;
    fn from_str(s: &str) -> Result<Self, BrokerAddrError> {
        Self::parse(s)
    }
}

/// Serialised as its address string (for config files); parsed on the way in.
impl serde::Serialize for BrokerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BrokerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_reads_back_from_its_display_and_its_json() {
        for s in ["mqtt://10.0.0.2:1883", "mqtt://[::1]:1884", "broker.local"] {
            let a = BrokerAddr::parse(s).unwrap();
            assert_eq!(BrokerAddr::parse(&a.to_string()).unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<BrokerAddr>(&json).unwrap(), a);
        }
        assert!(serde_json::from_str::<BrokerAddr>("\"mqtts://x\"").is_err());
    }

    #[test]
    fn broker_addresses_parse() {
        let a = BrokerAddr::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 1884));
        let a = BrokerAddr::parse("broker.local").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("broker.local", 1883));
        let a = BrokerAddr::parse("tcp://[::1]:1999/").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 1999));
        assert!(matches!(
            BrokerAddr::parse("mqtts://x:8883"),
            Err(BrokerAddrError::TlsUnsupported { .. })
        ));
        assert!(BrokerAddr::parse("http://x").is_err());
        assert!(BrokerAddr::parse("x:port").is_err());
        assert!(BrokerAddr::parse(":1883").is_err());
    }
}
