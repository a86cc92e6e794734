//! What the fleet engine needs from the outside, as traits and channel types:
//! the MQTT link implements [`DesiredPublisher`] and feeds [`Inbound`]
//! messages; the content store implements [`ImageResolver`].

use std::sync::Mutex;

use fleet_protocol::{DeviceId, Digest, ImageRef, StatusReport, Telemetry};

/// A failure of the link or resolver. The adapters live above the engine,
/// so their own errors travel as boxed sources.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("publishing the desired state of {device}")]
    Publish {
        device: DeviceId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the recording publisher's lock is poisoned")]
    Poisoned,
    #[error(
        "cannot resolve tag of {image}: this server has no image store attached; \
         give the image by digest (name@sha256:...) or import it first"
    )]
    NoImageStore { image: ImageRef },
    #[error(
        "{repository}:{tag} is not in the server's content store; import it with \
         `fleetctl image import <oci-layout|tar> --repository {repository}{}`, or give the image by digest",
        if tag == "latest" { String::new() } else { format!(" --tag {tag}") }
    )]
    NotImported { repository: String, tag: String },
    #[error("cannot resolve {image}")]
    Resolve {
        image: ImageRef,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Publishes a device's signed desired state (the link sends it retained, at
/// QoS 1, on the device's `desired` topic). Called with the latest generation
/// only, in order per device; a repeat of the same bytes must be harmless.
#[async_trait::async_trait]
pub trait DesiredPublisher: Send + Sync + 'static {
    async fn publish_desired(
        &self,
        device: &DeviceId,
        envelope_json: Vec<u8>,
    ) -> Result<(), PortError>;
}

/// A message from a device, decoded and checked by the link (the topic's
/// device id matches the message's).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Status(StatusReport),
    Presence { device: DeviceId, online: bool },
    Telemetry(Telemetry),
}

/// Resolves an image reference (a tag) to its manifest digest.
#[async_trait::async_trait]
pub trait ImageResolver: Send + Sync + 'static {
    async fn resolve(&self, image: &ImageRef) -> Result<Digest, PortError>;
}

/// The publisher used when no MQTT link is attached: it only records what
/// would have been sent (the desired states stay available through the API
/// and are published when a link is attached and the server restarts).
#[derive(Debug, Default)]
pub struct RecordingPublisher {
    sent: Mutex<Vec<(DeviceId, Vec<u8>)>>,
}

impl RecordingPublisher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything published so far, in order.
    pub fn sent(&self) -> Vec<(DeviceId, Vec<u8>)> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl DesiredPublisher for RecordingPublisher {
    async fn publish_desired(
        &self,
        device: &DeviceId,
        envelope_json: Vec<u8>,
    ) -> Result<(), PortError> {
        tracing::debug!(%device, bytes = envelope_json.len(), "desired state recorded (no MQTT link attached)");
        self.sent
            .lock()
            .map_err(|_| PortError::Poisoned)?
            .push((device.clone(), envelope_json));
        Ok(())
    }
}

/// The resolver used when no content store is attached: only references
/// that already carry a digest resolve.
#[derive(Debug, Default)]
pub struct DigestOnlyResolver;

#[async_trait::async_trait]
impl ImageResolver for DigestOnlyResolver {
    async fn resolve(&self, image: &ImageRef) -> Result<Digest, PortError> {
        image
            .digest()
            .cloned()
            .ok_or_else(|| PortError::NoImageStore {
                image: image.clone(),
            })
    }
}
