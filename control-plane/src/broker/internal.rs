//! The internal rumqttd instance behind the front: started on a loopback
//! port that only accepts the random secret made at start.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use rand_core::{OsRng, RngCore};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, Login, Packet, Protocol};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::frame::read_frame;
use super::{BrokerConfig, BrokerError, SessionError};

/// Why one readiness probe of the internal broker failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not tried")]
    NotTried,
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("encoding the probe CONNECT")]
    Encode(#[source] rumqttd::protocol::Error),
    #[error("no CONNACK within 5 s")]
    NoConnack,
    #[error("reading the CONNACK")]
    Session(#[source] SessionError),
    #[error("closed before CONNACK")]
    Closed,
    #[error("unexpected answer {0:02x?}")]
    Unexpected(Vec<u8>),
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(super) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds a free loopback port for rumqttd (which cannot report the port it
/// bound). The short race with another process is caught by
/// [`wait_until_ready`], which needs the secret to succeed.
pub(super) fn reserve_loopback_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    l.local_addr()
}

pub(super) fn start_rumqttd(
    config: &BrokerConfig,
    internal: SocketAddr,
    secret: &str,
) -> Result<(), BrokerError> {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: config.max_packet_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let want = secret.to_owned();
    connections.set_auth_handler(move |_client: String, _user: String, pass: String| {
        let ok = ct_eq(&sha256(pass.as_bytes()), &sha256(want.as_bytes()));
        async move { ok }
    });
    let server = rumqttd::ServerSettings {
        name: "fleet-internal".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let router = rumqttd::RouterConfig {
        // The front is the only client; it keeps one internal connection per
        // device connection.
        max_connections: config.max_connections + 16,
        max_outgoing_packet_count: 200,
        // Per-topic commit logs: retained messages live apart from them, and
        // each device topic carries few, small messages.
        max_segment_size: config.max_packet_bytes.max(1024 * 1024) * 2,
        max_segment_count: 2,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let rconfig = rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("fleet".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rconfig);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    Ok(())
}

/// Connects to rumqttd with the secret until it answers with CONNACK success.
pub(super) async fn wait_until_ready(
    internal: SocketAddr,
    secret: &str,
) -> Result<(), BrokerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = ProbeError::NotTried;
    while tokio::time::Instant::now() < deadline {
        match probe(internal, secret).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BrokerError::InternalStart {
        addr: internal,
        source: last,
    })
}

async fn probe(internal: SocketAddr, secret: &str) -> Result<(), ProbeError> {
    let mut s = TcpStream::connect(internal).await?;
    let connect = Connect {
        keep_alive: 10,
        client_id: "fleet-broker-probe".into(),
        clean_session: true,
    };
    let login = Some(Login {
        username: "fleet-broker-probe".into(),
        password: secret.to_owned(),
    });
    let mut out = BytesMut::new();
    V4.write(Packet::Connect(connect, None, None, None, login), &mut out)
        .map_err(ProbeError::Encode)?;
    s.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s, &mut buf, 64))
        .await
        .map_err(|_| ProbeError::NoConnack)?
        .map_err(ProbeError::Session)?
        .ok_or(ProbeError::Closed)?;
    if frame.len() == 4 && frame[0] == 0x20 && frame[3] == 0 {
        let _ = s.write_all(&[0xe0, 0x00]).await;
        Ok(())
    } else {
        Err(ProbeError::Unexpected(frame.to_vec()))
    }
}

/// File descriptors one device connection takes in the server: its socket,
/// and the front's socket to rumqttd and rumqttd's end of it.
pub(super) const FDS_PER_CONNECTION: u64 = 3;

/// Raises the soft open-file limit to the hard one (the default soft limit,
/// often 1,024, would cap the broker at ~300 devices), and warns when even
/// the hard limit cannot hold `max_connections` devices.
pub(super) fn raise_open_files(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let need = max_connections as u64 * FDS_PER_CONNECTION + 256;
    let soft = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) if soft < hard => {
            let raised = rustix::process::Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => hard,
                Err(e) => {
                    tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                    soft
                }
            }
        }
        (Some(soft), _) => soft,
        (None, _) => return,
    };
    if soft < need {
        tracing::warn!(
            open_files = soft,
            devices = (soft.saturating_sub(256)) / FDS_PER_CONNECTION,
            max_connections,
            "the open-file limit holds fewer device connections than the broker's max_connections: raise it (systemd LimitNOFILE={need}, or ulimit -Hn)"
        );
    }
}
