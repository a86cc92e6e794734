//! One proxied connection: CONNECT authentication, then the ACL on every
//! packet the client sends (see the module above).

use bytes::BytesMut;
use fleet_protocol::id::DeviceId;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, LastWill, Login, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pki::PeerCert;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::frame::{connack, puback, read_frame, suback_failure};
use super::internal::{ct_eq, sha256};
use super::{CONNECT_TIMEOUT, PublishHeader, Refusal, SessionError, Shared, next_frame};

/// Who a connection is, once its CONNECT was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Identity {
    Server,
    Device(DeviceId),
}

/// One client connection, proxied to the internal broker.
pub(super) async fn session<S>(
    mut client: S,
    certificate: Option<PeerCert>,
    shared: &Shared,
    cancel: &CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = shared.max_packet_bytes;
    let mut cbuf = BytesMut::with_capacity(4096);

    let first = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        f = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut client, &mut cbuf, max)) => {
            f.map_err(|_| SessionError::ConnectTimeout(CONNECT_TIMEOUT))??
        }
    };
    let Some(first) = first else { return Ok(()) };
    let (connect, will, login) = match V4.read_mut(&mut first.clone(), max) {
        Ok(Packet::Connect(c, _, will, _, login)) => (c, will, login),
        Ok(_) => return Err(SessionError::NotConnect),
        Err(v4_err) => {
            if matches!(v4_err, rumqttd::protocol::Error::InvalidProtocolLevel(_)) {
                client.write_all(&connack(1)).await?;
            }
            return Err(SessionError::Malformed(v4_err));
        }
    };
    let identity = match authorize(
        shared,
        &connect,
        will.as_ref(),
        login.as_ref(),
        certificate.as_ref(),
    ) {
        Ok(id) => id,
        Err(reason) => {
            client.write_all(&connack(reason.connack_code())).await?;
            return Err(SessionError::Refused {
                client_id: connect.client_id,
                reason,
            });
        }
    };
    debug!(client_id = %connect.client_id, ?identity, "CONNECT accepted");

    let mut broker = TcpStream::connect(shared.internal).await?;
    broker.set_nodelay(true)?;
    let login = Some(Login {
        username: connect.client_id.clone(),
        password: shared.secret.clone(),
    });
    let mut out = BytesMut::new();
    V4.write(
        Packet::Connect(connect.clone(), None, will, None, login),
        &mut out,
    )
    .map_err(SessionError::Malformed)?;
    broker.write_all(&out).await?;

    // Broker → client frames may be larger than what a client may send
    // (a retained desired state plus headers); frame them with headroom.
    let max_down = max.saturating_mul(2);
    let mut bbuf = BytesMut::with_capacity(4096);
    let mut revocations = shared.revoked.as_ref().map(|r| r.subscribe());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // A clean close (TLS close_notify) when the broker stops.
                let _ = client.shutdown().await;
                return Ok(());
            }
            revoked = next_revocation(&mut revocations) => {
                if let Identity::Device(device) = &identity
                    && (revoked.as_ref() == Some(device)
                        || shared.revoked.as_ref().is_some_and(|r| r.contains(device)))
                {
                    warn!(%device, "device revoked: disconnecting it");
                    return Err(SessionError::Refused {
                        client_id: device.to_string(),
                        reason: Refusal::Revoked(device.clone()),
                    });
                }
            }
            n = client.read_buf(&mut cbuf) => {
                if n? == 0 {
                    return Ok(());
                }
                while let Some(frame) = next_frame(&mut cbuf, max)? {
                    match filter(shared, &identity, &frame)? {
                        Verdict::Forward => broker.write_all(&frame).await?,
                        Verdict::Reply(reply) => client.write_all(&reply).await?,
                        Verdict::Drop => {}
                    }
                }
            }
            n = broker.read_buf(&mut bbuf) => {
                if n? == 0 {
                    return Ok(());
                }
                while let Some(frame) = next_frame(&mut bbuf, max_down)? {
                    client.write_all(&frame).await?;
                }
            }
        }
    }
}

enum Verdict {
    Forward,
    Reply(Vec<u8>),
    Drop,
}

/// The ACL decision for one client → broker packet.
fn filter(shared: &Shared, identity: &Identity, frame: &BytesMut) -> Result<Verdict, SessionError> {
    let Identity::Device(device) = identity else {
        return Ok(Verdict::Forward);
    };
    let packet_type = frame[0] >> 4;
    match packet_type {
        // CONNECT twice is a protocol violation.
        1 => Err(SessionError::SecondConnect),
        3 => {
            let publish = PublishHeader::parse(frame)?;
            if shared.scheme.device_may_publish(device, &publish.topic) {
                return Ok(Verdict::Forward);
            }
            warn!(%device, topic = %publish.topic, "ACL: publish refused");
            match (publish.qos, publish.pkid) {
                (0, _) => Ok(Verdict::Drop),
                (1, Some(pkid)) => Ok(Verdict::Reply(puback(pkid))),
                _ => Err(SessionError::ForbiddenPublish {
                    qos: publish.qos,
                    topic: publish.topic,
                }),
            }
        }
        8 => {
            let Packet::Subscribe(subscribe, _) = V4
                .read_mut(&mut frame.clone(), frame.len())
                .map_err(SessionError::Malformed)?
            else {
                return Err(SessionError::NotSubscribe);
            };
            let denied: Vec<&str> = subscribe
                .filters
                .iter()
                .map(|f| f.path.as_str())
                .filter(|f| !shared.scheme.device_may_subscribe(device, f))
                .collect();
            if denied.is_empty() {
                return Ok(Verdict::Forward);
            }
            warn!(%device, filters = ?denied, "ACL: subscribe refused");
            Ok(Verdict::Reply(suback_failure(
                subscribe.pkid,
                subscribe.filters.len(),
            )))
        }
        _ => Ok(Verdict::Forward),
    }
}

/// The next revocation, or `None` after missed ones (the caller re-checks);
/// pending forever without TLS.
async fn next_revocation(
    events: &mut Option<tokio::sync::broadcast::Receiver<DeviceId>>,
) -> Option<DeviceId> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = events else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(device) => Some(device),
        Err(RecvError::Lagged(_)) => None,
        Err(RecvError::Closed) => {
            *events = None;
            None
        }
    }
}

fn authorize(
    shared: &Shared,
    connect: &Connect,
    will: Option<&LastWill>,
    login: Option<&Login>,
    certificate: Option<&PeerCert>,
) -> Result<Identity, Refusal> {
    if connect.client_id == shared.server.client_id {
        let Some(login) = login else {
            return Err(Refusal::NoCredentials);
        };
        return if login.username == shared.server.client_id
            && ct_eq(
                &sha256(login.password.as_bytes()),
                &sha256(shared.server.password.as_bytes()),
            ) {
            Ok(Identity::Server)
        } else {
            Err(Refusal::BadServerCredentials)
        };
    }
    let device = match &shared.revoked {
        // TLS: the certificate is the identity; the client id must agree.
        Some(revoked) => {
            let Some(cert) = certificate else {
                return Err(Refusal::NoCertificate);
            };
            if connect.client_id != cert.device.as_str() {
                return Err(Refusal::CertificateMismatch(cert.device.clone()));
            }
            if revoked.contains(&cert.device) {
                return Err(Refusal::Revoked(cert.device.clone()));
            }
            cert.device.clone()
        }
        None => {
            let Some(login) = login else {
                return Err(Refusal::NoCredentials);
            };
            let device =
                DeviceId::new(connect.client_id.as_str()).map_err(Refusal::NotADeviceId)?;
            if login.username != connect.client_id {
                return Err(Refusal::UserNameMismatch);
            }
            if !shared
                .devices
                .authenticate(&device, login.password.as_bytes())
            {
                return Err(Refusal::BadDeviceToken);
            }
            device
        }
    };
    if let Some(will) = will {
        let topic = String::from_utf8_lossy(&will.topic);
        if !shared.scheme.device_may_publish(&device, &topic) {
            return Err(Refusal::ForbiddenWill(topic.into_owned()));
        }
    }
    Ok(Identity::Device(device))
}
