//! Wires the BLE bridge into the registry: registry BLE devices are bridged with their profile,
//! and what they report is recorded and republished on their own MQTT topics, so plugins, Home
//! Assistant and the UI see a BLE thermometer exactly like an MQTT one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use machinomy_core::{DeviceId, TopicKind};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::ble::{self, BleBackend, BleBridge, BleConfig, BleDevice, BleHandle, BleReport, DeviceProfile};
use super::{Bridge, BridgeError, BridgeEvent, Registry};
use crate::config::{BleBackendKind, BleSettings};
use crate::hub::now;
use crate::store::DeviceKind;

/// The BLE side as the bridge holds it: the running bridge's handle and the known profiles.
#[derive(Debug)]
pub(super) struct BleLink {
    handle: BleHandle,
    profiles: BTreeMap<String, DeviceProfile>,
}

/// A BLE bridge ready to run, and where its reports come out.
pub(super) struct Runner {
    bridge: BleBridge,
    requests: mpsc::Receiver<ble::BleRequest>,
    reports: mpsc::Sender<BleReport>,
}

impl Runner {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        if let Err(e) = self.bridge.run(self.requests, self.reports, shutdown).await {
            warn!(error = %e, "the BLE bridge stopped");
        }
    }
}

/// The backend `settings` name (`backend` overrides it, for tests).
pub(super) async fn backend(
    settings: &BleSettings,
    backend: Option<Arc<dyn BleBackend>>,
) -> Result<Arc<dyn BleBackend>, BridgeError> {
    if let Some(backend) = backend {
        return Ok(backend);
    }
    match settings.backend {
        BleBackendKind::Simulated => Ok(Arc::new(ble::SimulatedBle::new())),
        #[cfg(feature = "ble")]
        BleBackendKind::Btleplug => Ok(Arc::new(ble::BtleplugBackend::new().await?)),
        #[cfg(not(feature = "ble"))]
        BleBackendKind::Btleplug => {
            Err(BridgeError::Invalid("this hub was built without the `ble` feature (btleplug)".to_owned()))
        }
    }
}

/// Loads the profiles and builds the BLE bridge for the registry's BLE devices.
pub(super) fn start(
    settings: &BleSettings,
    backend: Arc<dyn BleBackend>,
    registry: &Registry,
) -> Result<(BleLink, Runner, mpsc::Receiver<BleReport>), BridgeError> {
    let profiles = match &settings.profiles {
        Some(dir) => DeviceProfile::load_dir(dir)?,
        None => BTreeMap::new(),
    };
    let mut devices = Vec::new();
    for device in registry.list() {
        if let DeviceKind::Ble { address, profile } = &device.record.kind {
            match profiles.get(profile) {
                Some(found) => devices.push(BleDevice {
                    id: device.record.id.to_string(),
                    address: address.clone(),
                    profile: found.clone(),
                }),
                None => warn!(device = %device.record.id, profile, "no such BLE profile; the device is not bridged"),
            }
        }
    }
    info!(devices = devices.len(), profiles = profiles.len(), "starting the BLE bridge");
    let config = BleConfig { poll: Some(Duration::from_secs(settings.poll_secs)), ..BleConfig::default() };
    let bridge = BleBridge::new(backend, devices, config)?;
    let (handle, requests) = BleHandle::channel();
    let (reports, reports_rx) = mpsc::channel(ble::REPORT_QUEUE);
    Ok((BleLink { handle, profiles }, Runner { bridge, requests, reports }, reports_rx))
}

impl BleLink {
    pub(super) fn check_profile(&self, profile: &str) -> Result<(), BridgeError> {
        if self.profiles.contains_key(profile) {
            Ok(())
        } else {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            Err(BridgeError::Invalid(format!("no BLE profile {profile:?} (known: {})", known.join(", "))))
        }
    }

    pub(super) async fn add(&self, id: &DeviceId, address: &str, profile: &str) -> Result<(), BridgeError> {
        let profile = self
            .profiles
            .get(profile)
            .ok_or_else(|| BridgeError::Invalid(format!("no BLE profile {profile:?}")))?
            .clone();
        let device = BleDevice { id: id.to_string(), address: address.to_owned(), profile };
        Ok(self.handle.add_device(device).await?)
    }

    pub(super) async fn remove(&self, id: &DeviceId) -> Result<(), BridgeError> {
        Ok(self.handle.remove_device(id.as_str()).await?)
    }

    pub(super) async fn command(
        &self,
        id: &DeviceId,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<(), BridgeError> {
        Ok(self.handle.command(id.as_str(), name, payload).await?)
    }
}

/// Records BLE reports in the registry and republishes them on the device's MQTT topics.
pub(super) async fn relay_reports(
    bridge: Bridge,
    mut reports: mpsc::Receiver<BleReport>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let report = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            report = reports.recv() => match report {
                Some(report) => report,
                None => return,
            },
        };
        let device = match report_device(&report).parse::<DeviceId>() {
            Ok(device) => device,
            Err(e) => {
                warn!(error = %e, "a BLE report for an invalid device id");
                continue;
            }
        };
        let mqtt = bridge.inner.mqtt.as_ref();
        match report {
            BleReport::State { fields, .. } => {
                bridge.state_reported(&device, fields, true, now());
                if let (Some(mqtt), Some(current)) = (mqtt, bridge.registry().get(&device)) {
                    let payload = serde_json::to_vec(&current.state).unwrap_or_default();
                    let _ = mqtt.publish(TopicKind::State.topic(&device), payload, true).await;
                }
            }
            BleReport::Event { name, value, .. } => {
                bridge.registry().record_event(&device, &name, &value, now());
                if let Some(mqtt) = mqtt {
                    let payload = serde_json::to_vec(&value).unwrap_or_default();
                    let _ = mqtt.publish(TopicKind::Event(name.clone()).topic(&device), payload, false).await;
                }
                bridge.emit(BridgeEvent::Event { device, name, payload: value });
            }
            BleReport::Availability { online, .. } => {
                if bridge.registry().set_online(&device, online, now()) != Some(online) {
                    bridge.emit(BridgeEvent::Availability { device: device.clone(), online });
                }
                if let Some(mqtt) = mqtt {
                    let status = if online { "online" } else { "offline" };
                    let _ = mqtt.publish(TopicKind::Status.topic(&device), status.as_bytes().to_vec(), true).await;
                }
            }
            BleReport::Error { error, .. } => {
                warn!(%device, %error, "a BLE device sent what its profile cannot read");
                if let Some(mqtt) = mqtt {
                    mqtt.publish_error(&device, &format!("ble:{device}"), &error, None).await;
                }
            }
        }
    }
}

fn report_device(report: &BleReport) -> &str {
    match report {
        BleReport::State { device, .. }
        | BleReport::Event { device, .. }
        | BleReport::Availability { device, .. }
        | BleReport::Error { device, .. } => device,
    }
}
