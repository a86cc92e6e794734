//! Load generator and counting subscriber for `bench/ingest.sh`, and the
//! connection load of `bench/tls.sh`.
//!
//! `ingest_load publish`: simulates N devices publishing through a real MQTT
//! broker — one status report each (QoS 1, retained, with device info, one
//! committed app), then R rounds of telemetry each (QoS 0) as fast as the
//! connections take them. A quarter of the devices send a Jetson-like report
//! (thermal zones, power rails, GPU/EMC load), the others a plain one. The
//! devices are spread over C connections (one broker account that may publish
//! for all of them, e.g. Mosquitto without ACL), or with `--tokens DATA_DIR`
//! each device gets its own connection with its own credentials (client id =
//! user = device id, password = its device token), as on the embedded broker.
//!
//! `ingest_load count`: subscribes to every device's telemetry (QoS 0) and
//! counts what arrives, a plain subscriber as the broker's pass-through
//! baseline.
//!
//! Both print one `key=value` line on stdout at the end.
//!
//! `ingest_load connect`: one connection per device, each with its own
//! device token or (over TLS) its own certificate, set up and held on
//! command (see `connect.rs`).
#![allow(clippy::print_stdout)]

mod connect;
mod payload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use fleet_control_plane::device_token::DeviceTokens;
use fleet_control_plane::link::BrokerAddr;
use fleet_protocol::message::encode;
use fleet_protocol::{DeviceId, Topic, TopicKind, TopicScheme};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Outgoing, Packet, QoS};

use payload::{device_id, jetson, now, status, telemetry};

/// Connections being opened at once.
const CONNECTING: usize = 64;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Publish(PublishArgs),
    Count(CountArgs),
    Connect(connect::ConnectArgs),
}

#[derive(Parser)]
struct PublishArgs {
    /// mqtt://host:port
    #[arg(long)]
    broker: String,
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Connections the devices are spread over (ignored with --tokens).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Telemetry reports per device.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Send one status report per device first.
    #[arg(long)]
    status: bool,
    /// Device ids are `<prefix>-00000`...
    #[arg(long, default_value = "dev")]
    prefix: String,
    #[arg(long, default_value = "bench")]
    user: String,
    #[arg(long, default_value = "")]
    password: String,
    /// One connection per device, with the device token derived from the
    /// server's secret in this data directory.
    #[arg(long)]
    tokens: Option<PathBuf>,
}

#[derive(Parser)]
struct CountArgs {
    #[arg(long)]
    broker: String,
    /// Stop once this many messages arrived.
    #[arg(long)]
    expect: u64,
    /// Stop after this long without a message (once one arrived).
    #[arg(long, default_value_t = 3)]
    idle_secs: u64,
    /// Give up if nothing arrives for this long at all.
    #[arg(long, default_value_t = 300)]
    max_wait_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Publish(a) => publish(a).await,
        Cmd::Count(a) => count(a).await,
        Cmd::Connect(a) => connect::run(a).await,
    }
}

struct Device {
    index: usize,
    status_topic: String,
    telemetry_topic: String,
    status: Bytes,
    /// Two payloads, alternated by round (values move between reports).
    telemetry: [Bytes; 2],
}

/// Groups of devices, one connection each: (client id, user, password, devices).
/// With device tokens every device is its own connection.
fn connections(
    a: &PublishArgs,
    devices: Vec<(DeviceId, Device)>,
    tokens: Option<&DeviceTokens>,
) -> Vec<(String, String, String, Vec<Device>)> {
    if let Some(tokens) = tokens {
        devices
            .into_iter()
            .map(|(id, d)| {
                let name = id.to_string();
                (name.clone(), name, tokens.token(&id), vec![d])
            })
            .collect()
    } else {
        let c = a.connections.clamp(1, a.devices.max(1));
        let mut groups: Vec<Vec<Device>> = (0..c).map(|_| Vec::new()).collect();
        for (k, (_, d)) in devices.into_iter().enumerate() {
            groups[k % c].push(d);
        }
        groups
            .into_iter()
            .enumerate()
            .map(|(k, g)| {
                (
                    format!("{}-load-{k}", a.prefix),
                    a.user.clone(),
                    a.password.clone(),
                    g,
                )
            })
            .collect()
    }
}

async fn publish(a: PublishArgs) -> anyhow::Result<()> {
    let addr = BrokerAddr::parse(&a.broker)?;
    let scheme = TopicScheme::default();
    let now = now();
    let tokens = match &a.tokens {
        Some(dir) => Some(DeviceTokens::open(dir)?),
        None => None,
    };
    let mut devices = Vec::with_capacity(a.devices);
    let mut bytes_total = 0usize;
    for i in 0..a.devices {
        let id = device_id(&a.prefix, i)?;
        let t = [
            encode(&telemetry(i, 0, now))?,
            encode(&telemetry(i, 1, now))?,
        ];
        bytes_total += t[0].len();
        devices.push((
            id.clone(),
            Device {
                index: i,
                status_topic: scheme.render(&Topic::new(TopicKind::Status, id.clone())),
                telemetry_topic: scheme.render(&Topic::new(TopicKind::Telemetry, id.clone())),
                status: Bytes::from(encode(&status(&id, i, now)?)?),
                telemetry: t.map(Bytes::from),
            },
        ));
    }
    let jetson_bytes: Vec<usize> = devices
        .iter()
        .filter(|(_, d)| jetson(d.index))
        .map(|(_, d)| d.telemetry[0].len())
        .collect();
    let plain_bytes: Vec<usize> = devices
        .iter()
        .filter(|(_, d)| !jetson(d.index))
        .map(|(_, d)| d.telemetry[0].len())
        .collect();
    let avg = |v: &[usize]| v.iter().sum::<usize>() / v.len().max(1);

    let groups = connections(&a, devices, tokens.as_ref());

    let sent = Arc::new(AtomicU64::new(0));
    // Connections are opened at most CONNECTING at a time (as a fleet's
    // reconnect backoff spreads them): thousands at once make some wait past
    // any connect timeout.
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (client_id, user, password, group) in groups {
        let mut options = MqttOptions::new(client_id, addr.host.clone(), addr.port);
        options
            .set_credentials(user, password)
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_inflight(100);
        let rounds = a.rounds;
        let with_status = a.status;
        let sent = sent.clone();
        let connecting = connecting.clone();
        tasks.spawn(async move {
            run_connection(options, group, rounds, with_status, sent, connecting).await
        });
    }
    let mut failed = 0usize;
    let mut first_error = String::new();
    while let Some(r) = tasks.join_next().await {
        let err = match r {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        };
        failed += 1;
        if first_error.is_empty() {
            first_error = err;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = sent.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("ingest_load: {failed} connection(s) failed; first: {first_error}");
    }
    println!(
        "sent={n} secs={secs:.3} rate={:.0} devices={} jetson_bytes={} plain_bytes={} avg_bytes={} failed_connections={failed}",
        n as f64 / secs.max(1e-9),
        a.devices,
        avg(&jetson_bytes),
        avg(&plain_bytes),
        bytes_total / a.devices.max(1),
    );
    if failed > 0 && n == 0 {
        bail!("no connection could publish");
    }
    Ok(())
}

/// Publishes a group's messages over one connection. The DISCONNECT goes out
/// once every status report is acknowledged, and the connection is read until
/// the broker closes it: closing a socket with unread acknowledgements in it
/// resets the connection, and the broker would drop what it had not read yet.
async fn run_connection(
    options: MqttOptions,
    group: Vec<Device>,
    rounds: usize,
    with_status: bool,
    sent: Arc<AtomicU64>,
    connecting: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let mut permit = Some(connecting.acquire_owned().await?);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(30);
    eventloop.set_network_options(network);
    let expect_acks = if with_status { group.len() } else { 0 };
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0usize);
    let producer = tokio::spawn(async move {
        if with_status {
            for d in &group {
                client
                    .publish(
                        d.status_topic.clone(),
                        QoS::AtLeastOnce,
                        true,
                        d.status.clone(),
                    )
                    .await?;
            }
        }
        for round in 0..rounds {
            for d in &group {
                client
                    .publish(
                        d.telemetry_topic.clone(),
                        QoS::AtMostOnce,
                        false,
                        d.telemetry[round % 2].clone(),
                    )
                    .await?;
            }
        }
        let _ = acked_rx.wait_for(|n| *n >= expect_acks).await;
        client.disconnect().await?;
        Ok::<_, rumqttc::ClientError>(())
    });
    let mut acked = 0usize;
    let mut disconnecting = false;
    loop {
        let event = if disconnecting {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(e) => e,
                Err(_) => break,
            }
        } else {
            eventloop.poll().await
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                acked_tx.send_replace(acked);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => disconnecting = true,
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    producer.abort();
                    bail!("connection refused: {:?}", ack.code);
                }
                drop(permit.take());
            }
            Ok(_) => {}
            // The broker closed the connection after our DISCONNECT.
            Err(_) if disconnecting => break,
            Err(e) => {
                producer.abort();
                bail!("MQTT connection: {e}");
            }
        }
    }
    producer.await??;
    Ok(())
}

async fn count(a: CountArgs) -> anyhow::Result<()> {
    let addr = BrokerAddr::parse(&a.broker)?;
    let scheme = TopicScheme::default();
    let mut options = MqttOptions::new("bench-counter", addr.host, addr.port);
    options
        .set_credentials("bench-counter", "")
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    client
        .subscribe(scheme.filter_all(TopicKind::Telemetry), QoS::AtMostOnce)
        .await?;
    let mut received = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let started = Instant::now();
    loop {
        let wait = match first {
            Some(_) => Duration::from_secs(a.idle_secs),
            None => Duration::from_secs(a.max_wait_secs).saturating_sub(started.elapsed()),
        };
        match tokio::time::timeout(wait, eventloop.poll()).await {
            Err(_) => break,
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                println!("subscribed");
            }
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => {
                last = Instant::now();
                first.get_or_insert(last);
                received += 1;
                if received >= a.expect {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("MQTT connection: {e}"),
        }
    }
    let secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    println!(
        "received={received} secs={secs:.3} rate={:.0}",
        received as f64 / secs.max(1e-9)
    );
    Ok(())
}
