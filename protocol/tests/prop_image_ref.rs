#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the image reference parser.

use fleet_protocol::ImageRef;
use proptest::prelude::*;

const COMPONENT: &str = "[a-z0-9]{1,6}(([._]|__|-{1,3})[a-z0-9]{1,6}){0,2}";
const TAG: &str = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}";

/// `None` (Docker Hub) or an explicit domain.
fn domain() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("docker.io".to_owned())),
        Just(Some("localhost".to_owned())),
        "localhost:[0-9]{1,5}".prop_map(Some),
        "[a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?){1,3}(:[0-9]{1,5})?"
            .prop_map(Some),
        "\\[[0-9a-f]{0,4}:[0-9a-f:]{1,10}\\](:[0-9]{1,5})?".prop_map(Some),
    ]
}

fn digest() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[0-9a-f]{64}".prop_map(|h| Some(format!("sha256:{h}")))
    ]
}

prop_compose! {
    fn valid_ref()(
        domain in domain(),
        path in prop::collection::vec(COMPONENT, 1..4),
        tag in prop::option::of(TAG),
        digest in digest(),
    ) -> (String, Option<String>, Vec<String>, Option<String>, Option<String>) {
        let mut s = String::new();
        if let Some(d) = &domain {
            s.push_str(d);
            s.push('/');
        }
        s.push_str(&path.join("/"));
        if let Some(t) = &tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &digest {
            s.push('@');
            s.push_str(d);
        }
        (s, domain, path, tag, digest)
    }
}

proptest! {
    #[test]
    fn generated_valid_references_parse_and_display_round_trips(
        (input, domain, path, tag, digest) in valid_ref()
    ) {
        // Without a domain, a first component with '.' would itself be read as
        // a registry (covered by the unit tests); keep the expectation simple.
        prop_assume!(domain.is_some() || path.len() == 1 || !path[0].contains('.'));
        let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));

        let joined = path.join("/");
        match domain.as_deref() {
            None | Some("docker.io") => {
                prop_assert_eq!(r.registry(), "registry-1.docker.io");
                prop_assert_eq!(r.domain(), "docker.io");
                if path.len() == 1 {
                    prop_assert_eq!(r.repository(), format!("library/{joined}"));
                } else {
                    prop_assert_eq!(r.repository(), joined);
                }
            }
            Some(d) => {
                prop_assert_eq!(r.registry(), d);
                prop_assert_eq!(r.repository(), joined);
            }
        }
        let expected_tag = match (&tag, &digest) {
            (Some(t), _) => Some(t.as_str()),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        };
        prop_assert_eq!(r.tag(), expected_tag);
        prop_assert_eq!(r.digest().map(|d| d.as_str()), digest.as_deref());
        prop_assert_eq!(
            r.reference(),
            digest.as_deref().or(expected_tag).unwrap()
        );

        let shown = r.to_string();
        let again = ImageRef::parse(&shown).unwrap_or_else(|e| panic!("{shown:?} rejected: {e}"));
        prop_assert_eq!(&again, &r);
        prop_assert_eq!(again.to_string(), shown);

        let json = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(serde_json::from_str::<ImageRef>(&json).unwrap(), r);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,80}") {
        if let Ok(r) = ImageRef::parse(&s) {
            // Whatever is accepted is canonicalised stably.
            let again = ImageRef::parse(&r.to_string()).unwrap();
            prop_assert_eq!(again, r);
        }
    }

    #[test]
    fn reference_like_strings_never_panic(s in "[a-zA-Z0-9:/@._\\-\\[\\]]{0,60}") {
        if let Ok(r) = ImageRef::parse(&s) {
            let again = ImageRef::parse(&r.to_string()).unwrap();
            prop_assert_eq!(again, r);
        }
    }
}
