//! Why a `fleetctl` command failed, and the exit code scripts see for it.

use std::path::PathBuf;

use fleet_protocol::VerifyError;

use super::credentials::CredentialsError;
use super::image::ImportCliError;
use crate::client::ClientError;
use crate::keys::KeyError;
use crate::sign::SignError;

/// The text of `fleetctl --help` that documents [`ExitClass`].
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other failure (local files, keys, the server's own 5xx errors)
  2  usage error (bad arguments, no server or token given)
  3  rejected: the server refused the request (HTTP 4xx: bad token, unknown
     group, conflicting action) or a signature / trust check failed
  4  the server is unreachable (connection refused, DNS, timeout)";

/// What kind of failure a command ended with; each has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// Anything not below: exit code 1.
    Other,
    /// Bad arguments found after parsing (clap exits 2 on its own): 2.
    Usage,
    /// An HTTP 4xx answer, or a signature / trust verification refusal: 3.
    Rejected,
    /// No answer from the server (connect, DNS, timeout): 4.
    Unreachable,
}

impl ExitClass {
    pub fn code(self) -> u8 {
        match self {
            ExitClass::Other => 1,
            ExitClass::Usage => 2,
            ExitClass::Rejected => 3,
            ExitClass::Unreachable => 4,
        }
    }
}

/// The error type behind `<reqwest::Url as FromStr>`.
pub type UrlError = <reqwest::Url as std::str::FromStr>::Err;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("give an IMAGE and --group, e.g. fleetctl rollout model:v2 --group cameras")]
    MissingRolloutTarget,
    #[error("server URL {url:?} is not a URL ({source}); give one like http://127.0.0.1:8080")]
    BadServerUrl {
        url: String,
        #[source]
        source: UrlError,
    },
    #[error("server URL {url:?} is not http:// or https://")]
    UnsupportedScheme { url: String },
    #[error("the CA certificate (--ca / FLEET_CA): {message}")]
    Ca { message: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// A request to the server failed; `doing` says which.
    #[error("{doing}: {source}")]
    Server {
        doing: String,
        #[source]
        source: ClientError,
    },
    #[error("importing {path}: {source}")]
    Import {
        path: PathBuf,
        #[source]
        source: ImportCliError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "a release key is needed to sign the release (--release-key, or FLEET_RELEASE_KEY): {source}"
    )]
    ReleaseKey {
        #[source]
        source: KeyError,
    },
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("{path} is not a usable trust root: {source}")]
    TrustRoot {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error("reading the labels of {image}: {source}")]
    Labels {
        image: String,
        #[source]
        source: super::labels::LabelsError,
    },
    #[error(transparent)]
    Safety(crate::store::BadSafety),
    #[error("cannot make an app name from {repository}; pass --app")]
    NoAppName { repository: String },
    #[error("no rollouts yet: start one with fleetctl rollout IMAGE --group G")]
    NoRollouts,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to standard output: {source}")]
    Stdout {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode JSON: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("the system clock is before 1970: {source}")]
    Clock {
        #[source]
        source: std::time::SystemTimeError,
    },
    #[error("cannot start the async runtime: {source}")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The class of this failure, which gives the exit code.
    pub fn class(&self) -> ExitClass {
        match self {
            CliError::MissingRolloutTarget
            | CliError::Safety(_)
            | CliError::BadServerUrl { .. }
            | CliError::UnsupportedScheme { .. }
            | CliError::Ca { .. } => ExitClass::Usage,
            CliError::Credentials(e) => credentials_class(e),
            CliError::Server { source, .. } => client_class(source),
            CliError::Import { source, .. } => import_class(source),
            CliError::Key(e) | CliError::ReleaseKey { source: e } => key_class(e),
            CliError::Sign(SignError::Untrusted { .. }) | CliError::TrustRoot { .. } => {
                ExitClass::Rejected
            }
            CliError::Labels { source, .. } => labels_class(source),
            CliError::Sign(_)
            | CliError::NoAppName { .. }
            | CliError::NoRollouts
            | CliError::Read { .. }
            | CliError::Write { .. }
            | CliError::Stdout { .. }
            | CliError::Json { .. }
            | CliError::Clock { .. }
            | CliError::Runtime { .. } => ExitClass::Other,
        }
    }

    /// The exit code of this failure (see [`EXIT_CODES_HELP`]).
    pub fn exit_code(&self) -> u8 {
        self.class().code()
    }

    /// The message with the causes that it does not already include.
    pub fn report(&self) -> String {
        fleet_protocol::report(self)
    }
}

impl From<serde_json::Error> for CliError {
    fn from(source: serde_json::Error) -> Self {
        CliError::Json { source }
    }
}

fn credentials_class(e: &CredentialsError) -> ExitClass {
    match e {
        CredentialsError::Missing | CredentialsError::NoConfigDir => ExitClass::Usage,
        CredentialsError::Read { .. }
        | CredentialsError::Parse { .. }
        | CredentialsError::Write { .. } => ExitClass::Other,
    }
}

fn key_class(e: &KeyError) -> ExitClass {
    match e {
        KeyError::Trust { .. } | KeyError::RotationCheck { .. } => ExitClass::Rejected,
        KeyError::Read { .. }
        | KeyError::Write { .. }
        | KeyError::Exists { .. }
        | KeyError::Parse { .. }
        | KeyError::BadPrivate { .. }
        | KeyError::Mismatch { .. }
        | KeyError::InsecurePermissions { .. }
        | KeyError::WrongRole { .. }
        | KeyError::NotARootKey { .. } => ExitClass::Other,
    }
}

/// A transport failure: no answer at all is "unreachable", a request that
/// could not be built is a usage error (a bad URL), the rest is "other".
fn transport_class(e: &reqwest::Error) -> ExitClass {
    if e.is_connect() || e.is_timeout() {
        ExitClass::Unreachable
    } else if e.is_builder() {
        ExitClass::Usage
    } else {
        ExitClass::Other
    }
}

/// 4xx is a refusal; 5xx is the server's own failure, not a refusal.
fn status_class(status: reqwest::StatusCode) -> ExitClass {
    if status.is_client_error() {
        ExitClass::Rejected
    } else {
        ExitClass::Other
    }
}

pub fn client_class(e: &ClientError) -> ExitClass {
    match e {
        ClientError::Connect { source, .. } => transport_class(source),
        ClientError::Unauthorized { .. } => ExitClass::Rejected,
        ClientError::Api { status, .. } => status_class(*status),
        ClientError::Decode { .. } => ExitClass::Other,
    }
}

fn labels_class(e: &super::labels::LabelsError) -> ExitClass {
    use super::labels::LabelsError;
    match e {
        LabelsError::Http { source, .. } | LabelsError::Unreachable { source, .. } => {
            transport_class(source)
        }
        LabelsError::Status { status, .. } => status_class(*status),
        LabelsError::Label(_) | LabelsError::DigestMismatch { .. } => ExitClass::Rejected,
        LabelsError::TooLarge { .. }
        | LabelsError::Manifest { .. }
        | LabelsError::EmptyIndex { .. }
        | LabelsError::NestedIndex { .. }
        | LabelsError::Config { .. } => ExitClass::Other,
    }
}

fn import_class(e: &ImportCliError) -> ExitClass {
    match e {
        ImportCliError::Http { source, .. } => transport_class(source),
        ImportCliError::Refused { status, .. } => {
            reqwest::StatusCode::from_u16(*status).map_or(ExitClass::Other, status_class)
        }
        ImportCliError::NotALayout { .. } => ExitClass::Usage,
        ImportCliError::Io { .. }
        | ImportCliError::Pack { .. }
        | ImportCliError::Client(_)
        | ImportCliError::BadAnswer { .. } => ExitClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_exit_code() {
        let codes: Vec<u8> = [
            ExitClass::Other,
            ExitClass::Usage,
            ExitClass::Rejected,
            ExitClass::Unreachable,
        ]
        .into_iter()
        .map(ExitClass::code)
        .collect();
        assert_eq!(codes, [1, 2, 3, 4]);
        for code in codes {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")), "{code}");
        }
    }

    #[test]
    fn client_errors_are_classed_by_status() {
        let api = |status| ClientError::Api {
            status,
            code: Some(crate::api::types::ErrorCode::Unknown("x".into())),
            message: "m".into(),
        };
        assert_eq!(
            client_class(&api(reqwest::StatusCode::NOT_FOUND)),
            ExitClass::Rejected
        );
        assert_eq!(
            client_class(&api(reqwest::StatusCode::CONFLICT)),
            ExitClass::Rejected
        );
        assert_eq!(
            client_class(&api(reqwest::StatusCode::INTERNAL_SERVER_ERROR)),
            ExitClass::Other
        );
        assert_eq!(
            client_class(&ClientError::Unauthorized {
                message: "m".into()
            }),
            ExitClass::Rejected
        );
        assert_eq!(
            CliError::Credentials(CredentialsError::Missing).class(),
            ExitClass::Usage
        );
    }

    #[test]
    fn a_report_names_each_cause_once() {
        let e = CliError::Read {
            path: "/x".into(),
            source: std::io::Error::other("gone"),
        };
        assert_eq!(e.report(), "cannot read /x: gone");
    }
}
