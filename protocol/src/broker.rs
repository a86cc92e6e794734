//! The MQTT broker address shared by the agent and the server
//! (`mqtts://host:port` over TLS; `mqtt://host:port`, `tcp://host:port`,
//! `host[:port]`, `[v6]:port` in plain TCP).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerAddrError {
    #[error("invalid broker address {addr:?}: {reason}")]
    Bad { addr: String, reason: &'static str },
}

/// Where the broker is: `mqtts://host:port` (TLS, port 8883 when left out),
/// or `mqtt://host:port` / `host:port` (plain TCP, port 1883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// MQTT over TLS.
    pub tls: bool,
}

impl BrokerAddr {
    pub fn parse(addr: &str) -> Result<Self, BrokerAddrError> {
        let bad = |reason| BrokerAddrError::Bad {
            addr: addr.to_owned(),
            reason,
        };
        let (tls, rest) = match addr
            .strip_prefix("mqtts://")
            .or_else(|| addr.strip_prefix("ssl://"))
        {
            Some(rest) => (true, rest),
            None => (
                false,
                addr.strip_prefix("mqtt://")
                    .or_else(|| addr.strip_prefix("tcp://"))
                    .unwrap_or(addr),
            ),
        };
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
            None if tls => 8883,
            None => 1883,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// `mqtt[s]://host:port`, with an IPv6 host in brackets: what
/// [`BrokerAddr::parse`] reads back.
impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
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
        for s in [
            "mqtt://10.0.0.2:1883",
            "mqtt://[::1]:1884",
            "broker.local",
            "mqtts://[::1]:8884",
        ] {
            let a = BrokerAddr::parse(s).unwrap();
            assert_eq!(BrokerAddr::parse(&a.to_string()).unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<BrokerAddr>(&json).unwrap(), a);
        }
        assert!(serde_json::from_str::<BrokerAddr>("\"https://x\"").is_err());
    }

    #[test]
    fn broker_addresses_parse() {
        let a = BrokerAddr::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 1884));
        let a = BrokerAddr::parse("broker.local").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("broker.local", 1883));
        let a = BrokerAddr::parse("tcp://[::1]:1999/").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 1999));
        let a = BrokerAddr::parse("mqtts://x").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("x", 8883, true));
        assert!(!BrokerAddr::parse("mqtt://x").unwrap().tls);
        assert!(BrokerAddr::parse("http://x").is_err());
        assert!(BrokerAddr::parse("x:port").is_err());
        assert!(BrokerAddr::parse(":1883").is_err());
    }
}
