//! Load tool: appliance state messages through the bridge into the registry.
//!
//! One hub runs in this process with its embedded broker (rumqttd on a free loopback port).
//! `--devices` paired MQTT devices each publish retained state messages (QoS 1) as fast as the
//! reader takes them, or `--rate` a second each, for `--seconds`; the hub's MQTT client reads
//! every one and records it in the registry (each message carries the device's next `seq`, so
//! the registry's states say how many it took). Then, in the same run and on the same broker,
//! the same devices publish to topics the bridge does not read, counted by one bare rumqttc
//! subscriber loop. Prints messages/s through the bridge and the bare loop, CPU per message for
//! both (the whole process's CPU time: the publishers, the broker and the reader, so the
//! difference is what the bridge costs), and their ratio.
//!
//! rumqttd acknowledges a publish once it is in its log and drops what a slow subscriber has not
//! read when the log wraps, so the devices stay at most [`WINDOW`] messages ahead of what the
//! reader counted: nothing is lost, and "as fast as possible" is the reader's pace.
//!
//! `cargo run --release -p machinomy-tests --bin bridge-load -- --devices 50 --seconds 5`

#![allow(clippy::print_stdout)] // a command-line tool: its output is the point

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use machinomy_core::DeviceId;
use machinomy_hub::bridge::{Bridge, BridgeTasks};
use machinomy_hub::{Config, Hub, now};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::task::JoinHandle;

/// How long the reader may go without a new message, once the devices stopped, before the
/// missing ones count as lost.
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// How long connecting and the warm-up may take.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);
/// Messages sent and not yet counted by the reader, across all devices.
const WINDOW: u64 = 2048;
/// How often the run counts what the reader took (and devices waiting on the window look again).
const SAMPLE: Duration = Duration::from_millis(1);
/// Linux reports CPU time in /proc in USER_HZ ticks, 100 a second on every architecture it runs on.
const TICKS_PER_SEC: u64 = 100;

struct Args {
    devices: usize,
    /// Messages a second per device; `None`: as fast as the broker takes them.
    rate: Option<u32>,
    seconds: u64,
}

fn args() -> Result<Args> {
    let mut args = Args { devices: 50, rate: None, seconds: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64> {
            let text = it.next().with_context(|| format!("a number after {flag}"))?;
            text.parse().with_context(|| format!("{flag} {text:?}: not a whole number"))
        };
        match flag.as_str() {
            "--devices" => args.devices = usize::try_from(value()?)?,
            "--rate" => args.rate = Some(u32::try_from(value()?).context("--rate: too large")?),
            "--seconds" => args.seconds = value()?,
            other => bail!("unknown argument {other:?} (use --devices N --rate M --seconds D)"),
        }
    }
    // One more device reads in the bare run; the registry holds at most MAX_DEVICES.
    let most = machinomy_hub::bridge::registry::MAX_DEVICES - 1;
    if args.devices == 0 || args.devices > most {
        bail!("--devices must be 1 to {most}");
    }
    if args.rate == Some(0) || args.seconds == 0 {
        bail!("--rate and --seconds must be more than 0");
    }
    Ok(args)
}

/// The process's CPU time so far (user + system, every thread, from /proc/self/stat).
fn process_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("cannot read /proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    let rest = stat.rsplit_once(')').context("unexpected /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |n: usize| -> Result<u64> {
        fields.get(n - 3).context("short /proc/self/stat")?.parse().context("unexpected /proc/self/stat")
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_millis(total * 1000 / TICKS_PER_SEC))
}

/// A TOML basic string.
fn toml_string(path: &Path) -> Result<String> {
    let text = path.to_str().context("a temp dir path that is not UTF-8")?;
    ensure!(!text.chars().any(char::is_control), "a temp dir path with control characters");
    Ok(format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// A hub with only the bridge running: the embedded broker on a free port, no peer network, no BLE.
async fn start_hub(dir: &Path) -> Result<(Hub, Bridge, BridgeTasks, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let text = format!(
        "[hub]\nname = \"bridge-load\"\ndata_dir = {}\n[p2p]\nenabled = false\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n",
        toml_string(&dir.join("data"))?
    );
    let config = Config::parse(&text, &dir.join("hub.toml"), Path::new("/unused"))?;
    let (hub, _) = Hub::open(&config).await?;
    let (bridge, tasks) =
        Bridge::start(&config, hub.payments().clone(), hub.market().clone(), hub.devices().clone()).await?;
    Ok((hub, bridge, tasks, port))
}

/// Where a run's messages are counted, sampled every [`SAMPLE`] by the run itself, so both
/// runs pay the same for counting.
enum Reader {
    /// The registry: each device's state holds the `seq` of its latest message, and a device's
    /// messages arrive in order, so the registry took the sum of the `seq`s.
    Registry { bridge: Bridge, devices: Vec<DeviceId> },
    /// What the bare loop counted.
    Bare(Arc<AtomicU64>),
}

impl Reader {
    fn count(&self) -> u64 {
        match self {
            Reader::Registry { bridge, devices } => devices
                .iter()
                .filter_map(|id| bridge.registry().get(id))
                .filter_map(|device| device.state.get("seq").and_then(Value::as_u64))
                .sum(),
            Reader::Bare(count) => count.load(Ordering::Relaxed),
        }
    }
}

/// One device's connection: its event loop runs on its own task.
struct Connection {
    client: AsyncClient,
    task: JoinHandle<()>,
}

/// Pairs device `name` and logs in as it (retrying while the broker is not listening yet).
/// `count` counts the messages it is sent.
async fn connect(bridge: &Bridge, port: u16, name: &str, count: Option<Arc<AtomicU64>>) -> Result<Connection> {
    let pairing = bridge.pair(name.parse()?, None, None, None, now()).await?;
    let password = pairing.password.context("an MQTT device gets a password")?;
    let until = Instant::now() + SETUP_DEADLINE;
    loop {
        let mut options = MqttOptions::new(name, "127.0.0.1", port);
        options.set_credentials(name, password.as_str()).set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 256);
        match tokio::time::timeout(SETUP_DEADLINE, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                let task = tokio::spawn(run_events(events, count));
                return Ok(Connection { client, task });
            }
            other if Instant::now() >= until => bail!("{name} could not log in to the broker: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The bare loop: polls a connection, counting the messages that arrive.
async fn run_events(mut events: EventLoop, count: Option<Arc<AtomicU64>>) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(_))) => {
                if let Some(count) = &count {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// One message from every device, sent again until `ready` (the first ones may arrive before
/// the reader's subscription does).
async fn warm_up(
    devices: &[(String, Connection)],
    topic: fn(&str) -> String,
    mut ready: impl FnMut() -> bool,
    what: &str,
) -> Result<()> {
    let until = Instant::now() + SETUP_DEADLINE;
    while !ready() {
        ensure!(Instant::now() < until, "{what} did not hear every device's warm-up message");
        for (name, connection) in devices {
            connection.client.publish(topic(name), QoS::AtLeastOnce, true, r#"{"temperature":20}"#).await?;
        }
        let sent = Instant::now();
        while !ready() && sent.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(SAMPLE).await;
        }
    }
    Ok(())
}

/// What one run measured.
struct Run {
    sent: u64,
    received: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_message_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.received.max(1) as f64
    }
}

/// Every device publishes its state to `topic(device)` for `args.seconds`, at most [`WINDOW`]
/// ahead of the reader; returns once `reader` has counted them all (or stopped counting for
/// [`DRAIN_IDLE`]).
async fn run(args: &Args, devices: &[(String, Connection)], topic: fn(&str) -> String, reader: &Reader) -> Result<Run> {
    let reader_start = reader.count();
    let (sent, counted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cpu_before = process_cpu()?;
    let start = Instant::now();
    let until = tokio::time::Instant::from_std(start + Duration::from_secs(args.seconds));
    let mut publishers = Vec::with_capacity(devices.len());
    for (name, connection) in devices {
        let (client, topic, sent, counted, rate) =
            (connection.client.clone(), topic(name), sent.clone(), counted.clone(), args.rate);
        publishers.push(tokio::spawn(async move {
            let mut tick = rate.map(|rate| {
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                tick
            });
            let mut seq = 0u64;
            loop {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                }
                while sent.load(Ordering::Relaxed) >= counted.load(Ordering::Relaxed) + WINDOW {
                    tokio::time::sleep(SAMPLE).await;
                }
                if tokio::time::Instant::now() >= until {
                    return anyhow::Ok(());
                }
                seq += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                let state = format!(r#"{{"temperature":{}.5,"seq":{seq}}}"#, 15 + seq % 10);
                client.publish(topic.as_str(), QoS::AtLeastOnce, true, state).await?;
            }
        }));
    }
    // Count until every device stopped and the reader counted all they sent, or stopped counting.
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let count = reader.count() - reader_start;
        counted.store(count, Ordering::Relaxed);
        if count != last {
            (last, last_change) = (count, Instant::now());
        }
        if publishers.iter().all(JoinHandle::is_finished)
            && (count >= sent.load(Ordering::Relaxed) || last_change.elapsed() >= DRAIN_IDLE)
        {
            break;
        }
        tokio::time::sleep(SAMPLE).await;
    }
    let cpu = process_cpu()?.saturating_sub(cpu_before);
    for publisher in publishers {
        publisher.await??;
    }
    let sent = sent.load(Ordering::Relaxed);
    Ok(Run { sent, received: last, elapsed: last_change.duration_since(start), cpu })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let (hub, bridge, tasks, port) = start_hub(dir.path()).await?;

    let mut devices = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let name = format!("load-{i:05}");
        let connection = connect(&bridge, port, &name, None).await?;
        devices.push((name, connection));
    }
    let bare_count = Arc::new(AtomicU64::new(0));
    let bare_loop = connect(&bridge, port, "load-reader", Some(bare_count.clone())).await?;
    bare_loop.client.subscribe("bare/#", QoS::AtLeastOnce).await?;

    // Warm up both paths, which also waits until the hub's client and the bare loop are subscribed.
    let bridge_topic = |name: &str| format!("machinomy/{name}/state");
    let bare_topic = |name: &str| format!("bare/{name}/state");
    let ids = devices.iter().map(|(name, _)| name.parse()).collect::<Result<Vec<DeviceId>, _>>()?;
    let warm = |id: &DeviceId| bridge.registry().get(id).is_some_and(|d| d.state.get("temperature").is_some());
    warm_up(&devices, bridge_topic, || ids.iter().all(warm), "the bridge").await?;
    let heard = bare_count.clone();
    warm_up(&devices, bare_topic, || heard.load(Ordering::Relaxed) >= ids.len() as u64, "the bare loop").await?;

    let through_bridge =
        run(&args, &devices, bridge_topic, &Reader::Registry { bridge: bridge.clone(), devices: ids }).await?;
    let bare = run(&args, &devices, bare_topic, &Reader::Bare(bare_count)).await?;

    let pace = match args.rate {
        Some(rate) => format!("{rate} messages/s each"),
        None => format!("as fast as the reader takes them ({WINDOW} in flight)"),
    };
    println!("bridge load: {} devices, {pace}, {}s, retained state at QoS 1", args.devices, args.seconds);
    for (name, run) in [("through the bridge", &through_bridge), ("bare rumqttc loop", &bare)] {
        println!(
            "{name}: {} of {} messages in {:.2}s ({} not counted)",
            run.received,
            run.sent,
            run.elapsed.as_secs_f64(),
            run.sent.saturating_sub(run.received)
        );
    }
    println!("messages/s through the bridge: {:.0}", through_bridge.rate());
    println!("messages/s through the bare loop: {:.0}", bare.rate());
    println!(
        "CPU per message (whole process: publishers, broker, reader): bridge {:.1} µs, bare {:.1} µs",
        through_bridge.cpu_per_message_us(),
        bare.cpu_per_message_us()
    );
    println!(
        "ratio bridge/bare CPU per message = {:.3}",
        through_bridge.cpu_per_message_us() / bare.cpu_per_message_us()
    );

    for (_, connection) in &devices {
        connection.task.abort();
    }
    bare_loop.task.abort();
    tokio::time::timeout(Duration::from_secs(10), tasks.shutdown()).await.context("the bridge did not stop")?;
    hub.close().await?;
    Ok(())
}
