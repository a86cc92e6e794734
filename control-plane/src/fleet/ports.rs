//! What the fleet engine needs from the outside, as traits and channel types:
//! the MQTT link implements [`DesiredPublisher`] and feeds [`Inbound`]
//! messages; the content store implements [`ImageResolver`] and
//! [`UpdatePreparer`]; a Prometheus implements [`GateQuery`].

use std::sync::Mutex;

use fleet_protocol::{DeviceId, Digest, ImageRef, StatusReport, Telemetry};

use super::promql::Measurement;

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

/// Runs the query of a rollout's PromQL gate (the Prometheus adapter,
/// `crate::prometheus`). What goes wrong is part of the answer
/// ([`Measurement::Unreachable`]): the gate counts it as inconclusive.
#[async_trait::async_trait]
pub trait GateQuery: Send + Sync + 'static {
    /// The instant query's value per series, or why it could not run.
    async fn query(&self, promql: &str) -> Measurement;
}

/// Resolves an image reference (a tag) to its manifest digest.
#[async_trait::async_trait]
pub trait ImageResolver: Send + Sync + 'static {
    async fn resolve(&self, image: &ImageRef) -> Result<Digest, PortError>;
}

/// A device moving from one image to another: the manifest digests of the
/// release it runs and of the release a rollout gives it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageUpdate {
    pub from: Digest,
    pub to: Digest,
}

/// Prepares, ahead of the devices asking, what an update will make them
/// fetch (the content store computes layer deltas). Called by the engine
/// right after a rollout step that deploys commits. Best effort: it must
/// return at once (the work goes to a background task), and what goes
/// wrong is logged, never returned: a rollout does not wait for it.
pub trait UpdatePreparer: Send + Sync + 'static {
    fn prepare(&self, updates: Vec<ImageUpdate>);

    /// What a device running image `from` (none: nothing yet) will fetch
    /// to run image `to`, as far as known now; `None` when the images are
    /// not in the content store. Blocking (reads manifests); starts nothing.
    fn estimate(&self, _from: Option<&Digest>, _to: &Digest) -> Option<FetchEstimate> {
        None
    }
}

/// The bytes a device will fetch for an update ([`UpdatePreparer::estimate`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchEstimate {
    /// Bytes it will fetch: the config, each missing layer whole, or its
    /// delta where one is computed already.
    pub bytes: u64,
    /// What the missing layers cost whole (a plain `docker pull`).
    pub whole_bytes: u64,
    /// Layers of the target image it lacks.
    pub layers: usize,
    /// Of those, layers whose delta is computed and will be used.
    pub deltas: usize,
}

/// The preparer used when no content store is attached: nothing to do.
#[derive(Debug, Default)]
pub struct NoPreparation;

impl UpdatePreparer for NoPreparation {
    fn prepare(&self, updates: Vec<ImageUpdate>) {
        tracing::trace!(
            updates = updates.len(),
            "no content store attached: nothing prepared"
        );
    }
}

/// The gate query used when the server has no Prometheus configured: a
/// PromQL gate of a rollout started before (or followed with a Prometheus
/// since removed) is inconclusive, so that its rollout pauses with the
/// reason instead of waiting for a measurement that never comes.
#[derive(Debug, Default)]
pub struct NoPrometheus;

#[async_trait::async_trait]
impl GateQuery for NoPrometheus {
    async fn query(&self, _promql: &str) -> Measurement {
        Measurement::Unreachable(
            "this server has no prometheus.url configured (FLEET_PROMETHEUS_URL)".into(),
        )
    }
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
