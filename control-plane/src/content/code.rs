//! The error codes of the content endpoints: the OCI distribution codes the
//! pull API answers with, the delta endpoint's own, and the import
//! endpoint's. The server writes them; a client (`fleetctl image import`)
//! reads codes it does not know (added later) as [`ContentCode::Unknown`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentCode {
    NameUnknown,
    NameInvalid,
    TagInvalid,
    ManifestUnknown,
    ManifestInvalid,
    BlobUnknown,
    DigestInvalid,
    RangeInvalid,
    Unsupported,
    DeltaBasesInvalid,
    DeltaUnavailable,
    DeltaPending,
    ArchiveInvalid,
    TooLarge,
    Internal,
    /// The distribution spec's catch-all `UNKNOWN` ("unknown error").
    Unspecified,
    /// A code this side does not know.
    Unknown(String),
}

const NAMED: [(ContentCode, &str); 16] = [
    (ContentCode::NameUnknown, "NAME_UNKNOWN"),
    (ContentCode::NameInvalid, "NAME_INVALID"),
    (ContentCode::TagInvalid, "TAG_INVALID"),
    (ContentCode::ManifestUnknown, "MANIFEST_UNKNOWN"),
    (ContentCode::ManifestInvalid, "MANIFEST_INVALID"),
    (ContentCode::BlobUnknown, "BLOB_UNKNOWN"),
    (ContentCode::DigestInvalid, "DIGEST_INVALID"),
    (ContentCode::RangeInvalid, "RANGE_INVALID"),
    (ContentCode::Unsupported, "UNSUPPORTED"),
    (ContentCode::DeltaBasesInvalid, "DELTA_BASES_INVALID"),
    (ContentCode::DeltaUnavailable, "DELTA_UNAVAILABLE"),
    (ContentCode::DeltaPending, "DELTA_PENDING"),
    (ContentCode::ArchiveInvalid, "ARCHIVE_INVALID"),
    (ContentCode::TooLarge, "TOO_LARGE"),
    (ContentCode::Internal, "INTERNAL"),
    (ContentCode::Unspecified, "UNKNOWN"),
];

impl ContentCode {
    /// The wire form, e.g. `BLOB_UNKNOWN`.
    pub fn as_str(&self) -> &str {
        match self {
            ContentCode::Unknown(code) => code,
            known => NAMED
                .iter()
                .find(|(c, _)| c == known)
                .map_or("UNKNOWN", |(_, s)| s),
        }
    }

    /// Reads a wire code; one not listed here is [`ContentCode::Unknown`].
    pub fn parse(code: &str) -> Self {
        NAMED
            .iter()
            .find(|(_, s)| *s == code)
            .map_or_else(|| ContentCode::Unknown(code.to_owned()), |(c, _)| c.clone())
    }
}

impl std::fmt::Display for ContentCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ContentCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ContentCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|code| ContentCode::parse(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_from_its_wire_string() {
        for (code, wire) in NAMED {
            assert_eq!(code.as_str(), wire);
            assert_eq!(ContentCode::parse(wire), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ContentCode>(&json).unwrap(), code);
        }
        let later = ContentCode::parse("ADDED_LATER");
        assert_eq!(later, ContentCode::Unknown("ADDED_LATER".into()));
        assert_eq!(later.to_string(), "ADDED_LATER");
    }
}
