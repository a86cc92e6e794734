//! The client's side of the enrollment admin routes (`fleetctl enroll`,
//! `fleetctl devices revoke`).

use fleet_protocol::DeviceId;
use reqwest::Method;

use super::{Client, ClientError};
use crate::enroll::admin::{CreateEnrollToken, CreatedEnrollToken, EnrollTokenView, PendingView};
use crate::store::RevokedDevice;

impl Client {
    /// Makes a bootstrap token; the answer is the only time it is shown.
    pub async fn create_enroll_token(
        &self,
        req: &CreateEnrollToken,
    ) -> Result<CreatedEnrollToken, ClientError> {
        self.post("/enroll/tokens", req).await
    }

    pub async fn enroll_tokens(&self) -> Result<Vec<EnrollTokenView>, ClientError> {
        self.get("/enroll/tokens").await
    }

    pub async fn revoke_enroll_token(&self, id: &str) -> Result<EnrollTokenView, ClientError> {
        self.send(Method::POST, &format!("/enroll/tokens/{id}/revoke"), None)
            .await
    }

    pub async fn enroll_pending(&self) -> Result<Vec<PendingView>, ClientError> {
        self.get("/enroll/pending").await
    }

    /// Approves (`approve`) or rejects the enrollment `device` waits with.
    pub async fn decide_enrollment(
        &self,
        device: &DeviceId,
        approve: bool,
    ) -> Result<PendingView, ClientError> {
        let decision = if approve { "approve" } else { "reject" };
        self.send(
            Method::POST,
            &format!("/enroll/pending/{device}/{decision}"),
            None,
        )
        .await
    }

    /// Revokes `device` for good.
    pub async fn revoke_device(&self, device: &DeviceId) -> Result<RevokedDevice, ClientError> {
        self.send(Method::POST, &format!("/devices/{device}/revoke"), None)
            .await
    }
}
