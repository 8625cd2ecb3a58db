//! The embedded broker: rumqttd's router and one MQTT 3.1.1 server, so `machinomy-hub run` is
//! all a home needs. Devices log in with the credentials pairing gave them (checked against the
//! registry on every connect); the hub logs in with a password made fresh at each start.
//!
//! rumqttd authenticates but has no topic ACLs: any paired device may publish under another's
//! prefix. Spend requests are signed, so that cannot move money; for per-device topic ACLs run
//! Mosquitto (`[mqtt] mode = "external"`, packaging/mosquitto/).

use std::net::SocketAddr;
use std::sync::Arc;

use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::task::JoinHandle;
use tracing::{error, info};

use super::{BridgeError, HUB_MQTT_USER, Registry};

/// The largest packet the broker takes. Above the hub's own limit for device payloads
/// (`machinomy_core::device::MAX_PAYLOAD`), so a device sending 64 KiB–256 KiB is told why on its
/// `error` topic; anything larger is refused by the broker, which drops the connection.
pub(super) const MAX_PACKET: usize = 256 * 1024;

/// Starts the broker on `listen`; returns its task and the address it listens on.
pub(super) fn start(
    listen: SocketAddr,
    hub_password: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
    registry: Arc<Registry>,
) -> Result<(JoinHandle<()>, SocketAddr), BridgeError> {
    // rumqttd binds inside its task and only logs a failure: bind here first so a port in use
    // is an error at start, with the address in it.
    let probe = std::net::TcpListener::bind(listen)
        .map_err(|e| BridgeError::Broker { addr: listen, message: e.to_string() })?;
    drop(probe);

    let router = Router::new(
        0,
        RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
    );
    // The router runs on its own thread for the life of the process (rumqttd has no way to
    // stop it). Stopping the server below stops it accepting; connections already open stay up
    // until the process exits (rumqttd spawns them and offers no way to close them).
    let router_tx = router.spawn();
    let mut settings = ServerSettings {
        name: "machinomy".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PACKET,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    settings.set_auth_handler(move |client_id: String, username: String, password: String| {
        let allowed = if username == HUB_MQTT_USER {
            password == hub_password
        } else {
            // A device connects as itself: its client id is its id, so it cannot take over
            // another device's session (and fire that one's last will).
            client_id == username && registry.check_password(&username, &password)
        };
        if !allowed {
            info!(%username, "refused an MQTT login");
        }
        async move { allowed }
    });
    let mut server = Server::new(settings, router_tx, V4);
    let task = tokio::spawn(async move {
        tokio::select! {
            result = server.start(LinkType::Remote) => {
                if let Err(e) = result {
                    error!(error = %e, "the embedded MQTT broker stopped");
                }
            }
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    });
    info!(%listen, "embedded MQTT broker listening");
    Ok((task, listen))
}
