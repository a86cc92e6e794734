//! Validated identifiers. Constructors reject bad input, so a value of these
//! types is always safe to put in an MQTT topic, a file name or a URL path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        value: String,
        max: usize,
    },
    #[error("{kind} {value:?} contains {ch:?}; allowed are {allowed}")]
    BadChar {
        kind: &'static str,
        value: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("{kind} {value:?} must start with a lowercase letter or a digit")]
    BadStart { kind: &'static str, value: String },
    #[error("digest {value:?} is not of the form sha256:<64 lowercase hex digits>")]
    BadDigest { value: String },
}

fn validate_name(
    kind: &'static str,
    value: &str,
    max: usize,
    extra: &[char],
    allowed: &'static str,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            value: value.to_owned(),
            max,
        });
    }
    for ch in value.chars() {
        if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || extra.contains(&ch)) {
            return Err(IdError::BadChar {
                kind,
                value: value.to_owned(),
                ch,
                allowed,
            });
        }
    }
    let first = value.chars().next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(IdError::BadStart {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $extra:expr, $allowed:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_name($kind, &value, $max, $extra, $allowed)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Honours width, fill and alignment (`{:<20}`), as `str` does.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A device's identity: its MQTT client id and the name in its certificate.
    /// Lowercase letters, digits, `.`, `_` and `-`; at most 64 characters.
    DeviceId, "device id", 64, &['.', '_', '-'], "a-z 0-9 . _ -"
);
name_type!(
    /// A group of devices (e.g. `cameras`). Lowercase letters, digits, `.`, `_`, `-`.
    GroupName, "group name", 64, &['.', '_', '-'], "a-z 0-9 . _ -"
);
name_type!(
    /// An application on a device (one container). Lowercase letters, digits and `-`.
    AppName, "app name", 63, &['-'], "a-z 0-9 -"
);

/// A content digest: `sha256:` followed by 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub const ALGORITHM: &'static str = "sha256";

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        let ok = value.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(Self(value))
        } else {
            Err(IdError::BadDigest { value })
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(bytes).into())
    }

    /// Wraps a finished SHA-256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Self(format!("sha256:{}", hex::encode(hash)))
    }

    /// `sha256`.
    pub fn algorithm(&self) -> &str {
        Self::ALGORITHM
    }

    /// The 64 hex digits, without the algorithm prefix (safe as a file name).
    pub fn hex(&self) -> &str {
        &self.0[Self::ALGORITHM.len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Honours width, fill and alignment, as `str` does.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_accept_lowercase_names_and_reject_topic_characters() {
        assert!(DeviceId::new("cam-01.site_a").is_ok());
        for bad in ["", "Cam", "a/b", "a+b", "a#", "-lead", ".hidden", "a b"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            DeviceId::new("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn app_names_allow_only_letters_digits_and_dashes() {
        assert!(AppName::new("model-server").is_ok());
        assert!(AppName::new("model.server").is_err());
        assert!(AppName::new("model_server").is_err());
    }

    #[test]
    fn digests_are_sha256_with_64_lowercase_hex_digits() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.hex().len(), 64);
        assert!(Digest::new(d.as_str().to_uppercase()).is_err());
        assert!(Digest::new("sha512:abcd").is_err());
        assert!(Digest::new("sha256:abc").is_err());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn ids_and_digests_honour_width_fill_and_alignment() {
        let id = DeviceId::new("cam-1").unwrap();
        assert_eq!(format!("{id:<8}|"), "cam-1   |");
        assert_eq!(format!("{id:>8}|"), "   cam-1|");
        assert_eq!(format!("{id:.^9}"), "..cam-1..");
        assert_eq!(format!("{id:3}"), "cam-1", "never cut short");
        assert_eq!(format!("{:<8}|", GroupName::new("g").unwrap()), "g       |");
        assert_eq!(format!("{:<4}|", AppName::new("ab").unwrap()), "ab  |");
        let d = Digest::of(b"x");
        assert_eq!(format!("{d:<75}|"), format!("{d}    |"));
    }
}
