//! The registry client: configuration, authenticated requests with retries,
//! and manifests. Blob downloads are in `blob.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_protocol::Digest;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::auth::{AuthHeader, Challenge, Credentials, TokenCache, TokenResponse, parse_challenge};
use super::error::{BodyError, FetchError, TokenError};
use super::limit::{RateLimiter, RetryPolicy};
use fleet_protocol::ImageRef;
use fleet_protocol::oci::media_type::MANIFEST_ACCEPT;
use fleet_protocol::oci::{ImageManifest, MAX_MANIFEST_BYTES, Manifest, Platform};

/// How a [`Client`] behaves. `Default` suits a device.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Manifests (and indexes) larger than this are refused; default
    /// [`MAX_MANIFEST_BYTES`], the limit the store and the importer use too.
    pub max_manifest_bytes: u64,
    pub retry: RetryPolicy,
    /// Bytes per second over all downloads of this client; `None` = unlimited.
    pub max_bandwidth: Option<u64>,
    /// Blob downloads running at once.
    pub max_concurrent_blobs: usize,
    /// Credentials by registry domain (as written in references, e.g. `ghcr.io`, `docker.io`).
    pub credentials: HashMap<String, Credentials>,
    /// Registry domains reached over plain HTTP; loopback registries always
    /// are, unless in `https`.
    pub plain_http: Vec<String>,
    /// Registries (`host:port` as written in references) reached over HTTPS
    /// even on loopback: the control plane's content endpoint when the
    /// agent's `server` is `https://`.
    pub https: Vec<String>,
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
    pub user_agent: String,
    /// The TLS configuration of every request (e.g. trusting the fleet CA
    /// besides the web roots and presenting the device's certificate);
    /// `None`: the public web roots, no client certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            retry: RetryPolicy::default(),
            max_bandwidth: None,
            max_concurrent_blobs: 3,
            credentials: HashMap::new(),
            plain_http: Vec::new(),
            https: Vec::new(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            user_agent: format!("fleet-agent/{}", crate::VERSION),
            tls: None,
        }
    }
}

/// A reqwest client for `cfg` over `tls` (default: the public web roots).
fn http_client(
    cfg: &ClientConfig,
    tls: Option<&rustls::ClientConfig>,
) -> Result<reqwest::Client, FetchError> {
    let mut tls = match tls {
        Some(tls) => tls.clone(),
        None => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(FetchError::Tls)?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout)
        .user_agent(cfg.user_agent.clone())
        .build()
        .map_err(FetchError::Build)
}

/// A manifest as fetched: its verified digest, media type and bytes.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
}

/// An image resolved for one platform.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The index the reference pointed at, if it was one.
    pub index: Option<FetchedManifest>,
    /// The platform's image manifest.
    pub manifest: FetchedManifest,
    pub image: ImageManifest,
}

/// An OCI distribution (pull) client. Cheap to clone; clones share the token
/// cache, the bandwidth cap, the download slots and the byte counter.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
    /// Blob downloads stop when this is cancelled (a newer desired state
    /// preempts them); `None`: they run to their end.
    interrupt: Option<CancellationToken>,
}

pub(super) struct Inner {
    /// Replaced by [`Client::set_tls`] (a renewed device certificate).
    http: std::sync::RwLock<reqwest::Client>,
    pub(super) cfg: ClientConfig,
    pub(super) tokens: TokenCache,
    pub(super) limiter: Option<RateLimiter>,
    pub(super) blob_slots: Semaphore,
    pub(super) received: AtomicU64,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self, FetchError> {
        let http = http_client(&cfg, cfg.tls.as_deref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                http: std::sync::RwLock::new(http),
                limiter: cfg.max_bandwidth.map(RateLimiter::new),
                blob_slots: Semaphore::new(cfg.max_concurrent_blobs.max(1)),
                tokens: TokenCache::default(),
                received: AtomicU64::new(0),
                cfg,
            }),
            interrupt: None,
        })
    }

    /// Uses `tls` for the requests from now on (every clone of this client
    /// too); requests under way finish with the previous configuration.
    pub fn set_tls(&self, tls: &rustls::ClientConfig) -> Result<(), FetchError> {
        let http = http_client(&self.inner.cfg, Some(tls))?;
        *self.inner.http.write().unwrap_or_else(|e| e.into_inner()) = http;
        Ok(())
    }

    /// The HTTP client requests go through now.
    pub(super) fn http(&self) -> reqwest::Client {
        self.inner
            .http
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A clone of this client (sharing everything) whose blob downloads stop
    /// with [`FetchError::Interrupted`] once `token` is cancelled, keeping
    /// what arrived (partial file and journal) for the next attempt.
    pub fn interrupted_by(&self, token: CancellationToken) -> Self {
        Self {
            inner: self.inner.clone(),
            interrupt: Some(token),
        }
    }

    /// Resolves when this client's downloads must stop; never without a token.
    pub(super) async fn interrupted(&self) {
        match &self.interrupt {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Body bytes received from registries so far (manifests and blobs,
    /// including bytes later discarded), over all clones of this client.
    pub fn bytes_received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    pub(super) fn count(&self, n: u64) {
        self.inner.received.fetch_add(n, Ordering::Relaxed);
    }

    /// `http(s)://host/v2/<repository>`.
    pub fn repo_url(&self, image: &ImageRef) -> String {
        let host = image.registry();
        let domain = image.domain();
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback =
            matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.starts_with("127.");
        let https = self
            .inner
            .cfg
            .https
            .iter()
            .any(|h| h == host || h == domain);
        let plain = !https && (loopback || self.inner.cfg.plain_http.iter().any(|p| p == domain));
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://{host}/v2/{}", image.repository())
    }

    pub fn blob_url(&self, image: &ImageRef, digest: &Digest) -> String {
        format!("{}/blobs/{digest}", self.repo_url(image))
    }

    pub fn manifest_url(&self, image: &ImageRef, reference: &str) -> String {
        format!("{}/manifests/{reference}", self.repo_url(image))
    }

    fn authorize(&self, req: RequestBuilder, registry: &str, scope: &str) -> RequestBuilder {
        match self.auth_for(registry, scope) {
            Some(AuthHeader::Bearer(t)) => req.bearer_auth(t),
            Some(AuthHeader::Basic(c)) => req.basic_auth(c.username, Some(c.password)),
            None => req,
        }
    }

    fn auth_for(&self, registry: &str, scope: &str) -> Option<AuthHeader> {
        if let Some(t) = self.inner.tokens.get(registry, scope) {
            return Some(AuthHeader::Bearer(t));
        }
        if self.inner.tokens.wants_basic(registry) {
            return self
                .inner
                .cfg
                .credentials
                .get(registry)
                .cloned()
                .map(AuthHeader::Basic);
        }
        None
    }

    /// Sends a GET for `url` in `image`'s repository, answering one auth
    /// challenge. 401/403/404 become errors; other statuses are the caller's.
    pub(super) async fn get(
        &self,
        image: &ImageRef,
        url: &str,
        headers: HeaderMap,
    ) -> Result<Response, FetchError> {
        self.send(reqwest::Method::GET, image, url, headers).await
    }

    /// [`Client::get`] with another method (HEAD).
    pub(super) async fn send(
        &self,
        method: reqwest::Method,
        image: &ImageRef,
        url: &str,
        headers: HeaderMap,
    ) -> Result<Response, FetchError> {
        let registry = image.domain();
        let scope = format!("repository:{}:pull", image.repository());
        let mut challenged = false;
        loop {
            let req = self
                .http()
                .request(method.clone(), url)
                .headers(headers.clone());
            let resp = self
                .authorize(req, registry, &scope)
                .send()
                .await
                .map_err(|source| FetchError::Http {
                    url: url.to_owned(),
                    source,
                })?;
            match resp.status() {
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_challenge);
                    self.answer(registry, &scope, challenge).await?;
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(FetchError::Unauthorized {
                        registry: registry.to_owned(),
                        reason: "credentials or token rejected (HTTP 401)".into(),
                    });
                }
                StatusCode::FORBIDDEN => {
                    return Err(FetchError::Unauthorized {
                        registry: registry.to_owned(),
                        reason: format!("HTTP 403 for {url}"),
                    });
                }
                StatusCode::NOT_FOUND => {
                    return Err(FetchError::NotFound {
                        url: url.to_owned(),
                    });
                }
                _ => return Ok(resp),
            }
        }
    }

    async fn answer(
        &self,
        registry: &str,
        scope: &str,
        challenge: Option<Challenge>,
    ) -> Result<(), FetchError> {
        let creds = self.inner.cfg.credentials.get(registry);
        match challenge {
            Some(Challenge::Basic) => {
                if creds.is_none() {
                    return Err(FetchError::Unauthorized {
                        registry: registry.to_owned(),
                        reason: "basic auth required and no credentials configured".into(),
                    });
                }
                self.inner.tokens.set_basic(registry);
                Ok(())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                let token_err = |source: TokenError| FetchError::Token {
                    realm: realm.clone(),
                    source,
                };
                // A realm that is no URL fails as the request is built
                // (`TokenError::Request`, a builder error).
                let mut req = self.http().get(realm.as_str());
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                req = req.query(&[("scope", asked.as_deref().unwrap_or(scope))]);
                if let Some(c) = creds {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| token_err(TokenError::Request(e)))?;
                if !resp.status().is_success() {
                    return Err(token_err(TokenError::Status(resp.status().as_u16())));
                }
                let body = read_limited(resp, 64 * 1024)
                    .await
                    .map_err(|e| token_err(TokenError::Body(e)))?;
                let tr: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| token_err(TokenError::Json(e)))?;
                let token = tr
                    .token
                    .or(tr.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| token_err(TokenError::NoToken))?;
                let lifetime = Duration::from_secs(tr.expires_in.unwrap_or(60).max(60));
                self.inner.tokens.put(registry, scope, token, lifetime);
                Ok(())
            }
            None => Err(FetchError::Unauthorized {
                registry: registry.to_owned(),
                reason: "HTTP 401 without a usable WWW-Authenticate challenge".into(),
            }),
        }
    }

    /// Fetches the manifest `reference` (a tag or a digest) of `image`'s
    /// repository. With `expected`, the bytes must hash to it. Retried until
    /// it succeeds, fails for good, or attempts run out.
    ///
    /// A plain loop rather than a retry helper taking an async closure: the
    /// future of an `AsyncFnMut` is not provably `Send` for every lifetime
    /// (the compiler's higher-ranked check), which made every caller's
    /// future (`Puller::pull`, the lifecycle's fetch) impossible to spawn.
    pub async fn fetch_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, FetchError> {
        let url = self.manifest_url(image, reference);
        let policy = &self.inner.cfg.retry;
        let mut attempt = 0;
        loop {
            match self.fetch_manifest_once(image, &url, expected).await {
                Err(e) if e.is_retryable() && attempt + 1 < policy.max_attempts => {
                    let pause = policy.delay(attempt);
                    tracing::warn!(what = %url, error = %e, ?pause, "retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn fetch_manifest_once(
        &self,
        image: &ImageRef,
        url: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            reqwest::header::HeaderValue::from_static(MANIFEST_ACCEPT),
        );
        let resp = self.get(image, url, headers).await?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        let limit = self.inner.cfg.max_manifest_bytes;
        if let Some(len) = resp.content_length()
            && len > limit
        {
            return Err(FetchError::ManifestTooLarge {
                url: url.to_owned(),
                limit,
                size: Some(len),
            });
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|source| FetchError::Http {
            url: url.to_owned(),
            source,
        })? {
            self.count(chunk.len() as u64);
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(FetchError::ManifestTooLarge {
                    url: url.to_owned(),
                    limit,
                    size: None,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        let claimed = expected
            .cloned()
            .or_else(|| header_digest.and_then(|h| Digest::new(h).ok()));
        if let Some(want) = claimed
            && want != digest
        {
            return Err(FetchError::DigestMismatch {
                url: url.to_owned(),
                expected: want,
                actual: digest,
            });
        }
        let manifest = Manifest::parse(&bytes, content_type.as_deref()).map_err(|source| {
            FetchError::Manifest {
                url: url.to_owned(),
                source,
            }
        })?;
        Ok(FetchedManifest {
            digest,
            media_type: manifest.media_type().to_owned(),
            bytes,
            manifest,
        })
    }

    /// Resolves `image` to the image manifest for `platform`, following an
    /// index if the reference names one.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<Resolved, FetchError> {
        let top = self
            .fetch_manifest(image, image.reference(), image.digest())
            .await?;
        match top.manifest.clone() {
            Manifest::Image(m) => Ok(Resolved {
                index: None,
                manifest: top,
                image: m,
            }),
            Manifest::Index(idx) => {
                let desc = idx.select(platform).ok_or_else(|| FetchError::NoPlatform {
                    reference: image.to_string(),
                    platform: platform.to_string(),
                    available: idx.platforms().join(", "),
                })?;
                let child = self
                    .fetch_manifest(image, desc.digest.as_str(), Some(&desc.digest))
                    .await?;
                let Manifest::Image(m) = child.manifest.clone() else {
                    return Err(FetchError::UnexpectedIndex {
                        url: self.manifest_url(image, desc.digest.as_str()),
                    });
                };
                Ok(Resolved {
                    index: Some(top),
                    manifest: child,
                    image: m,
                })
            }
        }
    }
}

pub(super) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn read_limited(mut resp: Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(BodyError::Read)? {
        if out.len() + c.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}
