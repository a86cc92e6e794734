//! Roles on every API route, over real HTTP on loopback: without a token
//! (401), with an unknown token (401), with a token of a lower role (403
//! naming the role needed), with a device's client certificate in the TLS
//! handshake (403; revoked: 403 before any route), and
//! every refusal and every mutating call in the audit log, which outlives
//! a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod served;

use common::*;
use fleet_control_plane::api::access::{Access, RouteInfo};
use fleet_control_plane::api::types::ErrorBody;
use fleet_control_plane::api::{self, ErrorCode};
use fleet_control_plane::store::{AuditCaller, AuditRecord, TokenRole};
use reqwest::{Method, StatusCode};

/// A concrete path for a route pattern: every `{param}` becomes `x`.
fn concrete(route: &RouteInfo) -> String {
    let path: Vec<&str> = route
        .path
        .split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect();
    format!("/api/v1{}", path.join("/"))
}

/// Calls `route` with `token` (none: no Authorization header); the status
/// and the error body, if the answer is one.
async fn call(
    http: &reqwest::Client,
    base: &str,
    route: &RouteInfo,
    token: Option<&str>,
) -> (StatusCode, Option<ErrorBody>) {
    let mut req = http.request(route.method.clone(), format!("{base}{}", concrete(route)));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if route.method != Method::GET {
        req = req.header("content-type", "application/json").body("{}");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).ok(),
    )
}

fn find<'a>(audit: &'a [AuditRecord], method: &Method, path: &str, who: &str) -> &'a AuditRecord {
    audit
        .iter()
        .find(|r| r.method == method.as_str() && r.path == path && r.who == who)
        .unwrap_or_else(|| panic!("no audit record of {who} {method} {path} in {audit:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_callers_below_its_role_and_every_refusal_is_audited() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let base = run.url();
    let http = run.http();
    let admin_token = run.token.clone().unwrap();
    let admin = run.client(&admin_token);
    let viewer = admin.create_token("dash", TokenRole::Viewer).await.unwrap();
    let operator = admin.create_token("ci", TokenRole::Operator).await.unwrap();
    let unknown = format!("fleet_{}", "0".repeat(64));

    let routes = api::routes();
    assert!(!routes.table().is_empty());
    for route in routes.table() {
        let Access::Role(needed) = route.access else {
            panic!("{route:?}: every API route so far needs a role");
        };
        for token in [None, Some(unknown.as_str()), Some("not-even-a-token")] {
            let (status, body) = call(&http, &base, route, token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route:?} with {token:?}");
            assert_eq!(body.unwrap().code, ErrorCode::Unauthorized);
        }
        for (name, token, role) in [
            ("dash", &viewer.token, TokenRole::Viewer),
            ("ci", &operator.token, TokenRole::Operator),
        ] {
            if role >= needed {
                continue;
            }
            let (status, body) = call(&http, &base, route, Some(token)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{route:?} as {name}");
            let body = body.unwrap();
            assert_eq!(body.code, ErrorCode::Forbidden);
            assert!(
                body.message.contains(&format!("needs the {needed} role")),
                "{}",
                body.message
            );
        }
    }

    // Allowed: a read is not audited, a mutating call is, whatever its outcome.
    let ok = http
        .get(format!("{base}/api/v1/devices"))
        .bearer_auth(&viewer.token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let labels = http
        .post(format!("{base}/api/v1/devices/cam-9/labels"))
        .bearer_auth(&operator.token)
        .json(&serde_json::json!({"set": {"site": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(labels.status(), StatusCode::NOT_FOUND);
    // No API route matches: still audited (no route pattern).
    let nowhere = http
        .post(format!("{base}/api/v1/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);

    let audit = admin.audit(10_000, None).await.unwrap();
    for route in routes.table() {
        let path = concrete(route);
        let r = find(&audit, &route.method, &path, "anonymous");
        assert_eq!(r.caller, AuditCaller::Anonymous);
        assert_eq!(r.status, 401);
        assert_eq!(
            r.route.as_deref(),
            Some(format!("/api/v1{}", route.path).as_str())
        );
        assert!(r.peer.unwrap().ip().is_loopback(), "{r:?}");
        assert!(r.refusal.is_some(), "{r:?}");
        if route.access != Access::Role(TokenRole::Viewer) {
            let r = find(&audit, &route.method, &path, "dash");
            assert_eq!(
                (r.caller, r.role, r.status),
                (AuditCaller::Operator, Some(TokenRole::Viewer), 403)
            );
            assert!(r.refusal.as_deref().unwrap().contains("needs the"), "{r:?}");
        }
    }
    let r = find(&audit, &Method::POST, "/api/v1/devices/cam-9/labels", "ci");
    assert_eq!(
        (r.role, r.status, r.refusal.as_deref()),
        (Some(TokenRole::Operator), 404, None)
    );
    assert_eq!(r.route.as_deref(), Some("/api/v1/devices/{id}/labels"));
    let r = find(&audit, &Method::POST, "/api/v1/nowhere", "anonymous");
    assert_eq!((r.status, r.route.as_deref()), (404, None));
    // The token creations were audited too, and no read that was allowed.
    let created: Vec<_> = audit
        .iter()
        .filter(|r| r.path == "/api/v1/tokens" && r.status == 201)
        .collect();
    assert_eq!(created.len(), 2, "{created:#?}");
    assert!(
        created
            .iter()
            .all(|r| r.who == "admin" && r.role == Some(TokenRole::Admin))
    );
    assert!(!audit.iter().any(|r| r.method == "GET" && r.status == 200));
    let seqs: Vec<u64> = audit.iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Paging forward from a sequence number.
    let after = admin.audit(2, Some(seqs[0])).await.unwrap();
    assert_eq!(after.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs[1..3]);

    // The audit log is on disk: a restarted server still has it.
    run.stop().await;
    let run = start(site.config(), recording()).await;
    let again = run.client(&admin_token).audit(10_000, None).await.unwrap();
    assert_eq!(again, audit, "the same records, and nothing new from reads");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_is_refused_on_every_operator_route_and_audited() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let admin_token = run.token.clone().unwrap();
    let base = run.url();
    // A real device certificate from the server's CA, presented in the TLS
    // handshake of the server's own listener.
    let security = run.security.clone().expect("TLS is on");
    let device = device_identity(&security.ca, "cam-01", 3600);
    let tls = fleet_agent::link::tls::client_config(security.ca.cert_pem(), false, Some(&device))
        .unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();

    let routes = api::routes();
    for route in routes.table() {
        // A token beside the certificate changes nothing: the connection is the device's.
        for token in [None, Some(admin_token.as_str())] {
            let (status, body) = call(&http, &base, route, token).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{route:?}");
            let body = body.unwrap();
            assert_eq!(body.code, ErrorCode::Forbidden);
            assert!(body.message.contains("device cam-01"), "{}", body.message);
        }
    }
    let audit = run.client(&admin_token).audit(10_000, None).await.unwrap();
    let audit: Vec<AuditRecord> = audit.into_iter().filter(|r| r.who == "cam-01").collect();
    assert_eq!(audit.len(), 2 * routes.table().len(), "{audit:#?}");
    for route in routes.table() {
        let r = find(&audit, &route.method, &concrete(route), "cam-01");
        assert_eq!(
            (r.caller, r.role, r.status),
            (AuditCaller::Device, None, 403)
        );
        assert_eq!(
            r.route.as_deref(),
            Some(format!("/api/v1{}", route.path).as_str())
        );
        assert_eq!(
            r.refusal.as_deref(),
            Some("devices may not call operator routes")
        );
        assert!(r.peer.unwrap().ip().is_loopback());
    }
    // Revoked: every request of the device is refused before any route.
    security.revoked.insert(dev("cam-01"));
    let (status, body) = call(&http, &base, &routes.table()[0], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.unwrap().message.contains("revoked"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_import_route_of_the_whole_server_needs_an_operator_token() {
    let site = Site::new();
    let config = site.config();
    let admin = served::admin_token(&config);
    let fleet = served::Fleet::start(config).await;
    let client = fleet.client(&admin);
    let http = fleet.http_client();
    let viewer = client
        .create_token("dash", TokenRole::Viewer)
        .await
        .unwrap();
    let operator = client
        .create_token("ci", TokenRole::Operator)
        .await
        .unwrap();
    let import = |token: Option<String>| {
        let mut req = http
            .post(format!(
                "{}/api/v1/images/import?repository=edge/app&tag=1",
                fleet.url()
            ))
            .body("not a tar");
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(import(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(import(Some(viewer.token)).await, StatusCode::FORBIDDEN);
    // Past the check: the body is refused for what it is.
    assert_eq!(import(Some(operator.token)).await, StatusCode::BAD_REQUEST);

    let audit = client.audit(100, None).await.unwrap();
    let imports: Vec<(&str, u16)> = audit
        .iter()
        .filter(|r| r.route.as_deref() == Some("/api/v1/images/import"))
        .map(|r| (r.who.as_str(), r.status))
        .collect();
    assert_eq!(imports, [("anonymous", 401), ("dash", 403), ("ci", 400)]);
    fleet.stop().await;
}
