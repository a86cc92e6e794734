//! MQTT link scenarios against the embedded broker (rumqttd behind the ACL front).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_support;

use mqtt_support::Kind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_keeps_devices_apart() {
    mqtt_support::acl_keeps_devices_apart(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_gets_retained_desired_and_server_sees_status_telemetry_presence() {
    mqtt_support::offline_device_gets_desired_and_server_sees_it(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_marks_a_killed_agent_offline() {
    mqtt_support::last_will_marks_a_killed_agent_offline(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_buffered_on_disk_while_the_broker_is_down() {
    mqtt_support::status_is_buffered_on_disk_while_the_broker_is_down(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused() {
    mqtt_support::bad_credentials_are_refused(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_publish_each_kind_with_the_scheme_delivery() {
    mqtt_support::both_sides_publish_each_kind_with_the_scheme_delivery(Kind::Embedded).await;
}
