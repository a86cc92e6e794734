//! Registry authentication: anonymous, basic, and bearer tokens obtained
//! through the `WWW-Authenticate: Bearer realm=...,service=...,scope=...`
//! challenge (Docker Hub, GHCR, distribution's token auth). Tokens are cached
//! per (registry, scope) until shortly before they expire.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A user name and password (or access token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

/// What a registry asked for in its 401 answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (quoted values may hold commas).
/// A bearer challenge needs a non-empty `realm` (the token endpoint).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    let mut map = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        map.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: map.remove("realm").filter(|r| !r.is_empty())?,
            service: map.remove("service"),
            scope: map.remove("scope"),
        }),
        _ => None,
    }
}

/// How to authenticate a request to a registry, as learnt so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthHeader {
    Basic(Credentials),
    Bearer(String),
}

/// Tokens per (registry, scope), and registries known to want basic auth.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
    basic: Mutex<Vec<String>>,
}

/// Tokens are dropped this long before the registry says they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl TokenCache {
    pub fn get(&self, registry: &str, scope: &str) -> Option<String> {
        let map = self.tokens.lock().ok()?;
        let (token, expires) = map.get(&(registry.to_owned(), scope.to_owned()))?;
        (Instant::now() < *expires).then(|| token.clone())
    }

    pub fn put(&self, registry: &str, scope: &str, token: String, lifetime: Duration) {
        let expires = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        if let Ok(mut map) = self.tokens.lock() {
            map.insert((registry.to_owned(), scope.to_owned()), (token, expires));
        }
    }

    pub fn wants_basic(&self, registry: &str) -> bool {
        self.basic
            .lock()
            .is_ok_and(|b| b.iter().any(|r| r == registry))
    }

    pub fn set_basic(&self, registry: &str) {
        if let Ok(mut b) = self.basic.lock()
            && !b.iter().any(|r| r == registry)
        {
            b.push(registry.to_owned());
        }
    }
}

/// The token endpoint's answer (`token` or the OAuth2 `access_token`).
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_commas_inside_quotes() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
    }

    #[test]
    fn basic_and_unknown_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge(r#"Bearer service="x""#),
            None,
            "realm is required"
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="",service="x""#),
            None,
            "an empty realm is no token endpoint"
        );
    }

    /// The header a registry would send for `challenge`, every value quoted.
    fn render(challenge: &Challenge) -> String {
        let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        match challenge {
            Challenge::Basic => "Basic".into(),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let mut header = format!("Bearer realm={}", quote(realm));
                for (key, value) in [("service", service), ("scope", scope)] {
                    if let Some(v) = value {
                        header.push_str(&format!(",{key}={}", quote(v)));
                    }
                }
                header
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_header_gives_a_realm_and_reparses_the_same(header in "(Bearer |bEaReR |Basic )?( ?,? ?[a-zA-Z]{0,6} ?= ?(\"([^\"\\\\]|\\\\.){0,10}\"?|[^,]{0,10})){0,4}|\\PC{0,60}") {
            if let Some(challenge) = parse_challenge(&header) {
                if let Challenge::Bearer { realm, .. } = &challenge {
                    proptest::prop_assert!(!realm.is_empty(), "{header}");
                }
                proptest::prop_assert_eq!(parse_challenge(&render(&challenge)), Some(challenge));
            }
        }

        #[test]
        fn quoted_values_survive_commas_quotes_and_backslashes(
            realm in "\\PC{1,30}",
            service in proptest::option::of("[ -~]{0,20}"),
            scope in proptest::option::of("[a-z:/,\\\\\"]{0,20}"),
        ) {
            let challenge = Challenge::Bearer { realm, service, scope };
            proptest::prop_assert_eq!(parse_challenge(&render(&challenge)), Some(challenge));
        }
    }

    #[tokio::test]
    async fn tokens_are_cached_per_scope_until_expiry() {
        let cache = TokenCache::default();
        cache.put(
            "r",
            "repository:a:pull",
            "t1".into(),
            Duration::from_secs(300),
        );
        assert_eq!(cache.get("r", "repository:a:pull").as_deref(), Some("t1"));
        assert_eq!(cache.get("r", "repository:b:pull"), None);
        cache.put(
            "r",
            "repository:b:pull",
            "t2".into(),
            Duration::from_secs(5),
        );
        assert_eq!(
            cache.get("r", "repository:b:pull"),
            None,
            "already within margin"
        );
    }
}
