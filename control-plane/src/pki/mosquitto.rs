//! Mosquitto as the broker of a fleet with device certificates: the files
//! `fleet-server mosquitto-config --out DIR` writes.
//!
//! - `ca.crt`, `server.crt` (chain), `server.key` (0600): the listener's
//!   TLS, issued by the fleet CA for the given names;
//! - `crl.pem`: the revoked devices' certificates (Mosquitto reads it at
//!   start and on SIGHUP; rewrite it and reload after `fleetctl devices
//!   revoke` — Mosquitto does not cut a live connection by itself);
//! - `acl`: each device reads only its own `desired`/`cmd` and writes only
//!   its own `status`/`telemetry`/`online` (`%c`, which Mosquitto forces to
//!   the certificate's common name); the server's own certificate
//!   ([`SERVER_CLIENT_NAME`], which it issues itself at every start) reads
//!   and writes the whole prefix;
//! - `fleet.conf`: the listener, to `include_dir` or append to
//!   `mosquitto.conf`: `require_certificate true` and
//!   `use_identity_as_username true`, so the identity is the verified
//!   certificate and never a user name the client claims.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use fleet_protocol::TopicScheme;

use super::{FleetCa, PkiError, SERVER_CLIENT_NAME, write_new};

/// How long the CRL written here is valid: Mosquitto refuses every client
/// once it has expired, so rewrite it (cron, or at every revocation) well
/// before.
pub const CRL_VALID_SECS: u64 = 30 * 24 * 3600;

/// What to write.
#[derive(Debug, Clone)]
pub struct MosquittoSetup<'a> {
    pub names: &'a [String],
    /// `listener PORT [ADDRESS]`.
    pub port: u16,
    pub address: Option<&'a str>,
    pub scheme: &'a TopicScheme,
    /// Serials (hex) of revoked device certificates.
    pub revoked_serials: &'a [String],
}

/// Writes the files into `dir` (made 0700; existing files are replaced);
/// returns the path of `fleet.conf`.
pub fn write(
    ca: &FleetCa,
    setup: &MosquittoSetup<'_>,
    dir: &Path,
    now: u64,
) -> Result<PathBuf, PkiError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let server = ca.issue_server(setup.names, now)?;
    let put = |name: &str, bytes: &[u8], mode: u32| -> Result<PathBuf, PkiError> {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        write_new(&path, bytes, mode)?;
        Ok(path)
    };
    let cafile = put("ca.crt", ca.cert_pem().as_bytes(), 0o644)?;
    let certfile = put("server.crt", server.chain_pem().as_bytes(), 0o644)?;
    let keyfile = put("server.key", server.key_pem().as_bytes(), 0o600)?;
    let crl = ca.crl_pem(setup.revoked_serials, now, CRL_VALID_SECS)?;
    let crlfile = put("crl.pem", crl.as_bytes(), 0o644)?;
    let acl = format!(
        "# Written by fleet-server mosquitto-config.\n{}\nuser {SERVER_CLIENT_NAME}\ntopic readwrite {}/#\n",
        setup.scheme.mosquitto_acl_patterns(),
        setup.scheme.prefix()
    );
    let aclfile = put("acl", acl.as_bytes(), 0o644)?;
    let listener = match setup.address {
        Some(addr) => format!("{} {addr}", setup.port),
        None => setup.port.to_string(),
    };
    let conf = format!(
        "# Written by fleet-server mosquitto-config: TLS with fleet device certificates.\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         listener {listener}\n\
         tls_version tlsv1.2\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         crlfile {crl}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         use_username_as_clientid true\n",
        acl = aclfile.display(),
        ca = cafile.display(),
        cert = certfile.display(),
        key = keyfile.display(),
        crl = crlfile.display(),
    );
    put("fleet.conf", conf.as_bytes(), 0o644)
}
