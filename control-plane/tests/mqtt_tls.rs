//! MQTT link scenarios over TLS with device certificates from a fleet CA,
//! against the embedded broker and Mosquitto (skipped, loudly, when not
//! installed): the same scenarios as in plain TCP, and what certificates
//! decide (identity, expiry, foreign CAs, revocation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_support;

use mqtt_support::Kind;

macro_rules! over_tls {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    mqtt_support::$name(Kind::EmbeddedTls).await;
                }
            )*
        }
        mod mosquitto {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    mqtt_support::$name(Kind::MosquittoTls).await;
                }
            )*
        }
    };
}

over_tls!(
    certificates_decide_identity,
    acl_keeps_devices_apart,
    offline_device_gets_desired_and_server_sees_it,
    last_will_marks_a_killed_agent_offline,
    status_is_buffered_on_disk_while_the_broker_is_down,
    both_sides_publish_each_kind_with_the_scheme_delivery,
);
