//! The bridge driven through the simulated radio, and the profile's byte mapping on its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;

/// Every wait finishes well within this, or the test fails instead of hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

const THERMOMETER: &str = include_str!("../../../../packaging/ble-profiles/thermometer.toml");
const ADDRESS: &str = "AA:BB:CC:DD:EE:01";

fn uuid(short: u16) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_1000_8000_0080_5f9b_34fb | (u128::from(short) << 96))
}
const BUTTON: Uuid = Uuid::from_u128(0x8d5e0001_3c2a_4f1b_9e7d_6a1f0c2b4d10);
const TARGET: Uuid = Uuid::from_u128(0x8d5e0002_3c2a_4f1b_9e7d_6a1f0c2b4d10);
fn temperature() -> Uuid {
    uuid(0x2a6e)
}
fn humidity() -> Uuid {
    uuid(0x2a6f)
}

fn thermometer() -> DeviceProfile {
    DeviceProfile::parse(THERMOMETER, Path::new("thermometer.toml")).unwrap()
}

/// A thermometer in range: 21.50 °C, 45.50 %, battery 87 %.
fn radio() -> Arc<SimulatedBle> {
    let sim = Arc::new(SimulatedBle::new());
    add_thermometer(&sim, ADDRESS);
    sim
}

fn add_thermometer(sim: &SimulatedBle, address: &str) {
    sim.add_peripheral(address, Some("Thermo"), &[uuid(0x181a)]);
    sim.set_value(address, temperature(), &2150i16.to_le_bytes());
    sim.set_value(address, humidity(), &4550u16.to_le_bytes());
    sim.set_value(address, uuid(0x2a19), &[87]);
    sim.set_value(address, BUTTON, &[0]);
    sim.set_value(address, TARGET, &[0, 0]);
}

fn device(id: &str, address: &str) -> BleDevice {
    BleDevice { id: id.into(), address: address.into(), profile: thermometer() }
}

fn fast() -> BleConfig {
    BleConfig {
        poll: None,
        connect_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(5),
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
    }
}

/// A running bridge and the test's ends of its channels.
struct Rig {
    sim: Arc<SimulatedBle>,
    ble: BleHandle,
    reports: mpsc::Receiver<BleReport>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), BleError>>,
}

impl Rig {
    fn start(sim: Arc<SimulatedBle>, devices: Vec<BleDevice>, config: BleConfig) -> Rig {
        let bridge = BleBridge::new(sim.clone(), devices, config).unwrap();
        let (ble, requests) = BleHandle::channel();
        let (report_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bridge.run(requests, report_tx, async move {
            let _ = stopped.await;
        }));
        Rig { sim, ble, reports, stop: Some(stop), task }
    }

    fn thermometer() -> Rig {
        Rig::start(radio(), vec![device("thermo", ADDRESS)], fast())
    }

    async fn next(&mut self) -> BleReport {
        match tokio::time::timeout(TEST_TIMEOUT, self.reports.recv()).await {
            Ok(Some(report)) => report,
            Ok(None) => panic!("the bridge stopped reporting"),
            Err(_) => panic!("no report within {TEST_TIMEOUT:?}"),
        }
    }

    /// Skips reports until one matches.
    async fn until(&mut self, what: &str, matches: impl Fn(&BleReport) -> bool) -> BleReport {
        let wait = async {
            loop {
                let report = self.next().await;
                if matches(&report) {
                    return report;
                }
            }
        };
        tokio::time::timeout(TEST_TIMEOUT, wait).await.unwrap_or_else(|_| panic!("no {what} within {TEST_TIMEOUT:?}"))
    }

    async fn online(&mut self) {
        let report = self.next().await;
        assert_eq!(report, BleReport::Availability { device: "thermo".into(), online: true });
    }

    async fn stop(mut self) -> Result<(), BleError> {
        let _ = self.stop.take().map(|stop| stop.send(()));
        tokio::time::timeout(TEST_TIMEOUT, self.task).await.expect("the bridge did not stop").unwrap()
    }
}

fn state(fields: serde_json::Value) -> BleReport {
    let serde_json::Value::Object(fields) = fields else { panic!("state must be an object") };
    BleReport::State { device: "thermo".into(), fields }
}

#[tokio::test]
async fn a_thermometer_reports_its_state_on_connect_and_each_notification() {
    let mut rig = Rig::thermometer();
    rig.online().await;
    // Polled fields are read on connect; the notified temperature waits for a notification.
    assert_eq!(rig.next().await, state(json!({"humidity": 45.5, "battery": 87})));

    rig.sim.notify(ADDRESS, temperature(), &2150i16.to_le_bytes()).await.unwrap();
    assert_eq!(rig.next().await, state(json!({"humidity": 45.5, "battery": 87, "temperature": 21.5})));
    rig.sim.notify(ADDRESS, temperature(), &(-375i16).to_le_bytes()).await.unwrap();
    assert_eq!(rig.next().await, state(json!({"humidity": 45.5, "battery": 87, "temperature": -3.75})));
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn polling_reads_changed_values_again() {
    let config = BleConfig { poll: Some(Duration::from_millis(20)), ..fast() };
    let mut rig = Rig::start(radio(), vec![device("thermo", ADDRESS)], config);
    rig.online().await;
    rig.next().await;
    rig.sim.set_value(ADDRESS, uuid(0x2a19), &[86]);
    let report = rig.until("a polled state", |r| matches!(r, BleReport::State { .. })).await;
    assert_eq!(report, state(json!({"humidity": 45.5, "battery": 86})));
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_field_reports_events_and_leaves_the_state_alone() {
    let mut rig = Rig::thermometer();
    rig.online().await;
    rig.next().await;
    rig.sim.notify(ADDRESS, BUTTON, &[2]).await.unwrap();
    assert_eq!(rig.next().await, BleReport::Event { device: "thermo".into(), name: "button".into(), value: json!(2) });
    rig.sim.notify(ADDRESS, BUTTON, &[2]).await.unwrap();
    // Events repeat even when the value does not (each press is one).
    assert_eq!(rig.next().await, BleReport::Event { device: "thermo".into(), name: "button".into(), value: json!(2) });
    rig.sim.notify(ADDRESS, temperature(), &100i16.to_le_bytes()).await.unwrap();
    assert_eq!(rig.next().await, state(json!({"humidity": 45.5, "battery": 87, "temperature": 1.0})));
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn a_command_is_encoded_with_the_profile_and_written() {
    let mut rig = Rig::thermometer();
    rig.online().await;
    rig.ble.command("thermo", "set_target", json!(21.5)).await.unwrap();
    rig.ble.command("thermo", "set_target", json!(-0.014)).await.unwrap();
    let writes: Vec<Vec<u8>> = rig.sim.writes().into_iter().map(|w| w.value).collect();
    // 21.5 / 0.01 = 2150 = 0x0866; -0.014 rounds to the nearest step, -1.
    assert_eq!(writes, [vec![0x66, 0x08], vec![0xff, 0xff]]);
    assert!(rig.sim.writes().iter().all(|w| w.characteristic == TARGET && w.address == ADDRESS));
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn commands_the_profile_cannot_encode_are_refused_and_nothing_is_written() {
    let mut rig = Rig::thermometer();
    rig.online().await;
    let refused = [
        ("nobody", "set_target", json!(20)),
        ("thermo", "set_humidity", json!(20)),
        ("thermo", "set_target", json!("warm")),
        ("thermo", "set_target", json!(400)),
        ("thermo", "set_target", json!(null)),
    ];
    for (device, name, payload) in refused {
        let error = rig.ble.command(device, name, payload.clone()).await.unwrap_err();
        let expected = match (device, name) {
            ("nobody", _) => matches!(error, BleError::UnknownDevice(_)),
            (_, "set_humidity") => matches!(error, BleError::UnknownCommand { .. }),
            _ => matches!(error, BleError::Payload { .. }),
        };
        assert!(expected, "{device}/{name} {payload}: {error}");
    }
    assert_eq!(rig.sim.writes(), []);
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn bad_bytes_from_the_peripheral_are_an_error_and_change_nothing() {
    let mut rig = Rig::thermometer();
    rig.online().await;
    rig.next().await;
    rig.sim.notify(ADDRESS, temperature(), &2000i16.to_le_bytes()).await.unwrap();
    rig.next().await;
    // One byte short of an i16.
    rig.sim.notify(ADDRESS, temperature(), &[7]).await.unwrap();
    let BleReport::Error { device, error } = rig.next().await else { panic!("expected an error report") };
    assert_eq!(device, "thermo");
    assert!(error.contains("temperature") && error.contains("expected 2 bytes, got 1"), "{error}");
    // The next good value changes only itself: the bad one left no trace.
    rig.sim.notify(ADDRESS, temperature(), &2010i16.to_le_bytes()).await.unwrap();
    assert_eq!(rig.next().await, state(json!({"humidity": 45.5, "battery": 87, "temperature": 20.1})));
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_link_reports_offline_then_reconnects_and_resubscribes() {
    let mut rig = Rig::thermometer();
    rig.online().await;
    rig.next().await;
    rig.sim.drop_link(ADDRESS).await.unwrap();
    assert_eq!(rig.next().await, BleReport::Availability { device: "thermo".into(), online: false });
    rig.until("online again", |r| matches!(r, BleReport::Availability { online: true, .. })).await;
    // The whole state again, so a reader that saw "offline" catches up.
    assert_eq!(rig.next().await, state(json!({"humidity": 45.5, "battery": 87})));
    rig.sim.notify(ADDRESS, temperature(), &1990i16.to_le_bytes()).await.unwrap();
    assert_eq!(rig.next().await, state(json!({"humidity": 45.5, "battery": 87, "temperature": 19.9})));
    assert_eq!(rig.sim.connects(ADDRESS), 2);
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn failed_connects_are_retried_until_the_device_answers() {
    let sim = radio();
    sim.fail_connects(ADDRESS, 3);
    let mut rig = Rig::start(sim, vec![device("thermo", ADDRESS)], fast());
    // Offline is reported once, not once per failed attempt.
    assert_eq!(rig.next().await, BleReport::Availability { device: "thermo".into(), online: false });
    rig.online().await;
    assert_eq!(rig.sim.connects(ADDRESS), 4);
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn a_command_to_an_offline_device_is_refused() {
    let sim = radio();
    sim.fail_connects(ADDRESS, u32::MAX);
    let mut rig = Rig::start(sim, vec![device("thermo", ADDRESS)], fast());
    assert_eq!(rig.next().await, BleReport::Availability { device: "thermo".into(), online: false });
    let error = rig.ble.command("thermo", "set_target", json!(20)).await.unwrap_err();
    assert!(matches!(error, BleError::Offline(_)), "{error}");
    rig.stop().await.unwrap();
}

/// Waits (yielding, with a deadline) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let wait = async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, wait).await.unwrap_or_else(|_| panic!("not {what} within {TEST_TIMEOUT:?}"));
}

#[tokio::test]
async fn devices_can_be_added_and_removed_while_running() {
    let sim = radio();
    add_thermometer(&sim, "aa:bb:cc:dd:ee:02");
    let mut rig = Rig::start(sim, Vec::new(), fast());
    rig.ble.add_device(device("kitchen", "aa:bb:cc:dd:ee:02")).await.unwrap();
    assert_eq!(rig.next().await, BleReport::Availability { device: "kitchen".into(), online: true });
    rig.next().await;
    assert!(rig.sim.is_connected("AA:BB:CC:DD:EE:02"));

    let duplicate = rig.ble.add_device(device("kitchen", ADDRESS)).await.unwrap_err();
    assert!(matches!(duplicate, BleError::DuplicateDevice(_)), "{duplicate}");
    let same_radio = rig.ble.add_device(device("other", "AA:BB:CC:DD:EE:02")).await.unwrap_err();
    assert!(matches!(same_radio, BleError::DuplicateAddress { .. }), "{same_radio}");

    rig.ble.remove_device("kitchen").await.unwrap();
    let error = rig.ble.command("kitchen", "set_target", json!(20)).await.unwrap_err();
    assert!(matches!(error, BleError::UnknownDevice(_)), "{error}");
    assert!(matches!(rig.ble.remove_device("kitchen").await, Err(BleError::UnknownDevice(_))));
    let sim = rig.sim.clone();
    eventually("disconnected", || !sim.is_connected("AA:BB:CC:DD:EE:02")).await;
    rig.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_bridge_and_disconnects_its_devices() {
    let mut rig = Rig::thermometer();
    rig.online().await;
    let (sim, ble) = (rig.sim.clone(), rig.ble.clone());
    rig.stop().await.unwrap();
    assert!(!sim.is_connected(ADDRESS));
    assert!(matches!(ble.command("thermo", "set_target", json!(20)).await, Err(BleError::Stopped)));
}

#[tokio::test]
async fn shutdown_is_prompt_even_when_nobody_reads_the_reports() {
    let sim = radio();
    let (ble, requests) = BleHandle::channel();
    let bridge = BleBridge::new(sim.clone(), vec![device("thermo", ADDRESS)], fast()).unwrap();
    // Room for one report: the bridge blocks on the second.
    let (report_tx, _reports) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bridge.run(requests, report_tx, async move {
        let _ = stopped.await;
    }));
    for _ in 0..3 {
        // Each waits until the bridge is connected and subscribed, then fills the queue.
        while sim.notify(ADDRESS, temperature(), &[1, 0]).await.is_err() {
            tokio::task::yield_now().await;
        }
    }
    stop.send(()).unwrap();
    tokio::time::timeout(TEST_TIMEOUT, task).await.expect("the bridge did not stop").unwrap().unwrap();
    drop(ble);
}

/// The simulated radio, except that the first connect panics (a backend bug).
#[derive(Debug)]
struct PanicsOnce {
    sim: Arc<SimulatedBle>,
    panicked: std::sync::atomic::AtomicBool,
}

impl BleBackend for PanicsOnce {
    fn scan(&self, timeout: Duration) -> BleFuture<'_, Vec<PeripheralInfo>> {
        self.sim.scan(timeout)
    }
    fn connect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()> {
        if !self.panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async { panic!("a backend bug") });
        }
        self.sim.connect(address)
    }
    fn read<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, Vec<u8>> {
        self.sim.read(address, characteristic)
    }
    fn write<'a>(&'a self, address: &'a str, characteristic: Uuid, value: &'a [u8]) -> BleFuture<'a, ()> {
        self.sim.write(address, characteristic, value)
    }
    fn subscribe<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, ()> {
        self.sim.subscribe(address, characteristic)
    }
    fn disconnect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()> {
        self.sim.disconnect(address)
    }
    fn events(&self) -> Option<mpsc::Receiver<BleEvent>> {
        self.sim.events()
    }
}

#[tokio::test]
async fn a_connect_that_panics_counts_as_failed_and_is_retried() {
    let backend = Arc::new(PanicsOnce { sim: radio(), panicked: Default::default() });
    let bridge = BleBridge::new(backend, vec![device("thermo", ADDRESS)], fast()).unwrap();
    let (_ble, requests) = BleHandle::channel();
    let (report_tx, mut reports) = mpsc::channel(REPORT_QUEUE);
    let task = tokio::spawn(bridge.run(requests, report_tx, std::future::pending()));
    let mut next = async || tokio::time::timeout(TEST_TIMEOUT, reports.recv()).await.unwrap().unwrap();
    assert_eq!(next().await, BleReport::Availability { device: "thermo".into(), online: false });
    assert_eq!(next().await, BleReport::Availability { device: "thermo".into(), online: true });
    task.abort();
}

#[tokio::test]
async fn a_backend_feeds_one_bridge_only() {
    let sim = radio();
    let _first = BleBridge::new(sim.clone(), Vec::new(), fast()).unwrap();
    assert!(matches!(BleBridge::new(sim, Vec::new(), fast()), Err(BleError::EventsTaken)));
}

#[tokio::test]
async fn the_simulated_radio_scans_its_peripherals() {
    let sim = radio();
    let found = sim.scan(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        found,
        [PeripheralInfo { address: ADDRESS.into(), name: Some("Thermo".into()), services: vec![uuid(0x181a)] }]
    );
}

/// Without BlueZ (no system D-Bus here, or no adapter) the real backend is a clear error, not a
/// panic or a hang. On a machine with an adapter it opens, which is fine too.
#[cfg(feature = "ble")]
#[tokio::test]
async fn the_btleplug_backend_without_an_adapter_is_a_clear_error() {
    match tokio::time::timeout(TEST_TIMEOUT, BtleplugBackend::new()).await {
        Ok(Ok(_backend)) => {}
        Ok(Err(error)) => {
            assert!(matches!(error, BleError::NoAdapter(_)), "{error}");
            assert!(error.to_string().starts_with("no Bluetooth adapter: "), "{error}");
        }
        Err(_) => panic!("BtleplugBackend::new did not answer within {TEST_TIMEOUT:?}"),
    }
}

// --- profiles -----------------------------------------------------------------------------------

#[test]
fn the_shipped_thermometer_profile_parses() {
    let profile = thermometer();
    assert_eq!(profile.name(), "thermometer");
    assert_eq!(profile.service(), uuid(0x181a));
    let names: Vec<&str> = profile.fields().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["temperature", "humidity", "battery", "button"]);
    let button = profile.field_for(BUTTON).unwrap();
    assert!(button.notify && button.event);
    assert_eq!(profile.command("set_target").unwrap().characteristic, TARGET);

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ble-profiles");
    let profiles = DeviceProfile::load_dir(&dir).unwrap();
    assert_eq!(profiles.get("thermometer"), Some(&profile));
}

#[test]
fn load_dir_refuses_two_profiles_with_one_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), THERMOMETER).unwrap();
    std::fs::write(dir.path().join("b.toml"), THERMOMETER).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a profile").unwrap();
    let error = DeviceProfile::load_dir(dir.path()).unwrap_err();
    assert!(matches!(error, ProfileError::DuplicateProfile { .. }), "{error}");
}

/// Each broken profile is refused with an error naming the key at fault.
#[test]
fn profile_errors_name_the_bad_key() {
    const HEAD: &str = "name = \"t\"\nservice = \"0000181a-0000-1000-8000-00805f9b34fb\"\n";
    const FIELD: &str =
        "[[field]]\nname = \"a\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "colour = \"red\"\n[[field]]\nname = \"a\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\n",
            "colour",
        ),
        ("name = \"Thermo\"\nservice = \"0000181a-0000-1000-8000-00805f9b34fb\"\n", "name"),
        ("name = \"t\"\nservice = \"not-a-uuid\"\n", "service"),
        ("", "field"),
        ("[[field]]\nname = \"a\"\ncharacteristic = \"x\"\nformat = \"u8\"\n", "field[0].characteristic"),
        (
            "[[field]]\nname = \"a\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u24le\"\n",
            "field[0].format",
        ),
        (
            "[[field]]\nname = \"a\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\nunit = \"C\"\n",
            "field[0].unit",
        ),
        (
            "[[field]]\nname = \"Temp\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\n",
            "field[0].name",
        ),
        (
            "[[field]]\nname = \"a\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"utf8\"\nscale = 0.1\n",
            "field[0].scale",
        ),
        (
            "[[field]]\nname = \"a\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\nscale = 0.0\n",
            "field[0].scale",
        ),
        (
            "[[field]]\nname = \"a\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\nevent = true\n",
            "field[0].event",
        ),
        (
            "FIELD[[field]]\nname = \"a\"\ncharacteristic = \"00002a6f-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\n",
            "field[1].name",
        ),
        (
            "FIELD[[field]]\nname = \"b\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\n",
            "field[1].characteristic",
        ),
        (
            "FIELD[[command]]\nname = \"go\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"bool\"\n[[command]]\nname = \"go\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\n",
            "command[1].name",
        ),
        (
            "FIELD[[command]]\nname = \"go\"\ncharacteristic = \"00002a6e-0000-1000-8000-00805f9b34fb\"\nformat = \"u8\"\nnotify = true\n",
            "command[0].notify",
        ),
    ];
    for (body, key) in cases {
        let body = body.replace("FIELD", FIELD);
        // The first two cases bring their own head.
        let text =
            if body.starts_with("colour") || body.starts_with("name = ") { body } else { format!("{HEAD}{body}") };
        match DeviceProfile::parse(&text, Path::new("p.toml")) {
            Err(ProfileError::Key { key: got, message, .. }) => assert_eq!(&got, key, "{message}\n{text}"),
            other => panic!("expected an error at {key}, got {other:?}\n{text}"),
        }
    }
    assert!(matches!(DeviceProfile::parse("name = ", Path::new("p.toml")), Err(ProfileError::Syntax { .. })));
}

#[test]
fn decode_and_encode_examples() {
    use Format::*;
    let decodes: &[(Format, Option<f64>, &[u8], serde_json::Value)] = &[
        (U8, None, &[200], json!(200)),
        (I8, None, &[0xff], json!(-1)),
        (U16le, Some(0.01), &[0xc6, 0x11], json!(45.5)),
        (I16le, Some(0.01), &[0x66, 0x08], json!(21.5)),
        (U32le, None, &[0xff, 0xff, 0xff, 0xff], json!(4_294_967_295u32)),
        (I32le, Some(10.0), &[0xfe, 0xff, 0xff, 0xff], json!(-20.0)),
        (F32le, None, &0.1f32.to_le_bytes(), json!(0.1)),
        (Utf8, None, "héllo".as_bytes(), json!("héllo")),
        (Bool, None, &[1], json!(true)),
    ];
    for (format, scale, bytes, value) in decodes {
        assert_eq!(&decode(*format, *scale, bytes).unwrap(), value, "{format} {bytes:?}");
        assert_eq!(encode(*format, *scale, value).unwrap(), *bytes, "{format} {value}");
    }
    let bad_bytes: &[(Format, &[u8])] = &[
        (U8, &[]),
        (U16le, &[1, 2, 3]),
        (F32le, &f32::NAN.to_le_bytes()),
        (F32le, &f32::INFINITY.to_le_bytes()),
        (Utf8, &[0xff, 0xfe]),
        (Bool, &[2]),
    ];
    for (format, bytes) in bad_bytes {
        assert!(decode(*format, None, bytes).is_err(), "{format} {bytes:?}");
    }
    let bad_values: &[(Format, Option<f64>, serde_json::Value)] = &[
        (U8, None, json!(256)),
        (U8, None, json!(-1)),
        (U8, None, json!(1.5)),
        (I16le, Some(0.01), json!(327.68)),
        (U32le, None, json!(u64::MAX)),
        (F32le, None, json!(1e39)),
        (U8, None, json!("1")),
        (Bool, None, json!(1)),
        (Utf8, None, json!(1)),
        (Utf8, None, json!("x".repeat(MAX_ATTRIBUTE_LEN + 1))),
    ];
    for (format, scale, value) in bad_values {
        assert!(encode(*format, *scale, value).is_err(), "{format} {value}");
    }
}

const NUMERIC: [Format; 7] =
    [Format::U8, Format::I8, Format::U16le, Format::I16le, Format::U32le, Format::I32le, Format::F32le];
const SCALES: [Option<f64>; 6] = [None, Some(0.01), Some(0.1), Some(0.5), Some(10.0), Some(0.3)];

/// The bytes a numeric format takes, from the low bytes of `raw`.
fn width(format: Format) -> usize {
    match format {
        Format::U8 | Format::I8 => 1,
        Format::U16le | Format::I16le => 2,
        _ => 4,
    }
}

proptest! {
    /// Every value a peripheral can send survives the trip to JSON and back to the same bytes.
    #[test]
    fn numeric_bytes_round_trip(format in prop::sample::select(NUMERIC.to_vec()), scale in prop::sample::select(SCALES.to_vec()), raw: [u8; 4]) {
        let bytes = &raw[..width(format)];
        if format == Format::F32le && !f32::from_le_bytes(raw).is_finite() {
            prop_assert!(decode(format, scale, bytes).is_err());
        } else {
            let value = decode(format, scale, bytes).unwrap();
            let back = encode(format, scale, &value).unwrap();
            if format == Format::F32le && scale.is_some() {
                // Scaling a float and back may move it by an ulp.
                let (a, b) = (f32::from_le_bytes(raw), f32::from_le_bytes(back.clone().try_into().unwrap()));
                prop_assert!((a - b).abs() <= a.abs() * 4.0 * f32::EPSILON, "{a} {b}");
            } else {
                prop_assert_eq!(back, bytes.to_vec());
            }
        }
    }

    /// A command value in range is written as the nearest step, so it reads back within half a step.
    #[test]
    fn numeric_values_round_trip(format in prop::sample::select(NUMERIC.to_vec()), scale in prop::sample::select(SCALES.to_vec()), fraction in 0.0f64..=1.0) {
        let step = scale.unwrap_or(1.0);
        let (min, max) = match format {
            Format::U8 => (0.0, 255.0),
            Format::I8 => (-128.0, 127.0),
            Format::U16le => (0.0, 65535.0),
            Format::I16le => (-32768.0, 32767.0),
            Format::U32le => (0.0, 4_294_967_295.0),
            Format::I32le => (-2_147_483_648.0, 2_147_483_647.0),
            _ => (-1e30, 1e30),
        };
        let (low, high) = (min * step, max * step);
        let mut x = low + (high - low) * fraction;
        if scale.is_none() && format != Format::F32le {
            x = x.round();
        }
        let bytes = encode(format, scale, &json!(x)).unwrap();
        let back = decode(format, scale, &bytes).unwrap().as_f64().unwrap();
        let tolerance = if format == Format::F32le { x.abs() * 1e-6 } else { step / 2.0 + x.abs() * 1e-12 };
        prop_assert!((back - x).abs() <= tolerance, "{format} {scale:?}: {x} came back as {back}");
    }

    #[test]
    fn decode_never_panics(format in prop::sample::select(vec![Format::U8, Format::I8, Format::U16le, Format::I16le, Format::U32le, Format::I32le, Format::F32le, Format::Utf8, Format::Bool]), scale in prop::sample::select(SCALES.to_vec()), bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(format, scale, &bytes);
    }

    #[test]
    fn encode_never_panics(format in prop::sample::select(NUMERIC.to_vec()), scale in prop::sample::select(SCALES.to_vec()), x in any::<f64>()) {
        let value = serde_json::Number::from_f64(x).map_or(json!(null), serde_json::Value::Number);
        let _ = encode(format, scale, &value);
    }
}
