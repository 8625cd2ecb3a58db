//! `machinomy-hub run`: opens the hub, serves the API, and on ctrl-c or SIGTERM stops
//! accepting work, lets in-flight requests finish, and flushes the books before exiting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::bridge::Listening;
use crate::config::Config;
use crate::hub::{Hub, HubError, now};

/// How often pending approvals are checked for expiry.
const EXPIRY_SWEEP: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish after a stop signal; then the server is cut off so
/// the books are flushed well inside a service manager's stop timeout, whatever clients do.
const DRAIN: Duration = Duration::from_secs(10);
/// How long start-up waits for the hub to be subscribed on the MQTT broker (requests to the
/// API wait meanwhile, and a stop signal is acted on after it).
const MQTT_READY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("cannot listen on {addr} (web.listen in {config}, or run --listen)")]
    Listen { addr: std::net::SocketAddr, config: String, source: std::io::Error },
    #[error("cannot install the {0} signal handler: {1}")]
    Signal(&'static str, std::io::Error),
    #[error("{0}")]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error("the plugin host could not start: {0}")]
    Plugins(#[from] crate::plugin::PluginError),
    #[error("admin token: {0}")]
    Auth(machinomy_web::AuthError),
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
    #[error("the peer network could not start: {0}")]
    Net(#[from] crate::net::NetError),
}

/// A shutdown signal every task can wait on.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub async fn wait(mut self) {
        // An error means the sender is gone, which is also a reason to stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Registers the ctrl-c and SIGTERM handlers now, so a signal during start-up is not the default
/// "die at once"; the future resolves on the first of them.
fn termination() -> Result<impl std::future::Future<Output = &'static str>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| DaemonError::Signal("SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| DaemonError::Signal("SIGINT", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Runs the hub until a termination signal.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let signal = termination()?;
    let (hub, created) = Hub::open(&config).await?;
    if created {
        info!(data_dir = %hub.data_dir().root().display(), "first run: created identity, admin token and store");
    }
    info!(name = hub.name(), identity = %hub.data_dir().public_key(), "hub open");

    let listener = tokio::net::TcpListener::bind(config.web.listen).await.map_err(|source| DaemonError::Listen {
        addr: config.web.listen,
        config: config.path.display().to_string(),
        source,
    })?;
    let addr = listener.local_addr().map_err(DaemonError::Serve)?;
    hub.data_dir().write_api_addr(addr)?;
    info!(%addr, "admin API listening");
    if !addr.ip().is_loopback() {
        warn!(%addr, "the admin API listens beyond this machine: anyone who reaches it and holds the token can move money");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = Vec::new();
    let net = if config.p2p.enabled {
        let net_config = crate::net::NetConfig {
            listen: config.p2p.listen.clone(),
            bootstrap: config.p2p.bootstrap.clone(),
            mdns: config.p2p.mdns,
            relay_server: config.p2p.relay_server,
            relays: config.p2p.relays.clone(),
        };
        let (handle, task) =
            crate::net::start(hub.data_dir().identity(), &net_config, Arc::new(hub.market().clone())).await?;
        info!(peer_id = handle.peer_id(), "peer network up");
        hub.market().attach(handle);
        let events = hub.payments().subscribe();
        background.push(tokio::spawn(pay_approved_invoices(hub.clone(), events, Shutdown(stop_rx.clone()))));
        Some(task)
    } else {
        info!("peer network disabled (p2p.enabled = false)");
        None
    };
    let (bridge, bridge_tasks) =
        crate::bridge::Bridge::start(&config, hub.payments().clone(), hub.market().clone(), hub.devices().clone())
            .await?;
    if let Some(addr) = bridge.broker_addr() {
        // Ready only once devices are heard: a device that publishes as soon as the hub answers
        // must not be missed. A broker that is down is not waited for long.
        match bridge.listening(MQTT_READY_WAIT).await {
            Listening::Subscribed => info!(broker = addr, "appliance bridge up"),
            Listening::Refused => {
                warn!(
                    broker = addr,
                    "appliance bridge up, but the broker refused a subscription: some devices are not heard"
                );
            }
            Listening::Waiting => {
                warn!(broker = addr, "the MQTT broker has not answered yet; devices are heard once it does");
            }
        }
    }
    hub.attach_bridge(bridge.clone());
    let plugin_tasks = match &config.plugins {
        Some(settings) => {
            let deps = crate::plugin::PluginDeps {
                store: hub.payments().store().clone(),
                payments: hub.payments().clone(),
                market: hub.market().clone(),
                devices: hub.devices().clone(),
                bridge: Some(bridge),
            };
            let (plugins, tasks) = crate::plugin::Plugins::start(settings.clone(), deps).await?;
            info!(dir = %settings.dir.display(), "plugin host up");
            hub.attach_plugins(plugins);
            Some(tasks)
        }
        None => {
            info!("plugins disabled (plugins.enabled = false)");
            None
        }
    };
    // Subscribed before the task is spawned, so a peer that subscribes at once is not missed.
    if let Some(events) = hub.market().net().map(|net| net.events()) {
        let offers_changed = hub.plugins().map(crate::plugin::Plugins::offers_changed);
        background.push(tokio::spawn(announce_offers(
            hub.clone(),
            events,
            config.p2p.offer_ttl_secs,
            offers_changed,
            Shutdown(stop_rx.clone()),
        )));
    }
    let (live, _) = tokio::sync::broadcast::channel(crate::live::CAPACITY);
    hub.attach_live(&live);
    let bridge_events = hub.bridge().map(crate::bridge::Bridge::subscribe);
    let books = hub.payments().subscribe();
    background.push(tokio::spawn(crate::live::feed(books, live, bridge_events, Shutdown(stop_rx.clone()))));
    let auth = machinomy_web::AdminAuth::new(hub.data_dir().admin_token()).map_err(DaemonError::Auth)?;
    let app = machinomy_web::router(Arc::new(hub.clone()), auth);
    let server_stop = Shutdown(stop_rx.clone());
    let server =
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(server_stop.wait()).await });
    background.push(tokio::spawn(expire_approvals(hub.clone(), Shutdown(stop_rx))));

    let reason = signal.await;
    info!(reason, "shutting down");
    let _ = stop_tx.send(true);
    let abort = server.abort_handle();
    match tokio::time::timeout(DRAIN, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "API server stopped with an error"),
        Ok(Err(e)) => warn!(error = %e, "API server task failed"),
        Err(_) => {
            warn!(seconds = DRAIN.as_secs(), "requests still open after the drain period; closing them");
            abort.abort();
        }
    }
    for task in background {
        let _ = task.await;
    }
    // Plugins first: they publish through the bridge and pay through the network.
    if let Some(tasks) = plugin_tasks {
        tasks.shutdown().await;
    }
    bridge_tasks.shutdown().await;
    if let Some(net) = net {
        net.shutdown().await;
    }
    hub.data_dir().clear_api_addr();
    hub.close().await?;
    info!("stopped; books flushed");
    Ok(())
}

async fn expire_approvals(hub: Hub, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {
                if let Err(e) = hub.payments().expire_due(now()).await {
                    warn!(error = %e, "could not expire pending approvals");
                }
            }
        }
    }
}

/// Announces this hub's offers (config's `[[sell]]` and plugins') now, again well before they
/// expire, whenever plugins' offers change, and whenever a peer starts listening for offers
/// (gossip keeps no history, so a newcomer would otherwise wait a period). An announcement in
/// progress gives way to shutdown: it may wait on peers that have gone.
async fn announce_offers(
    hub: Hub,
    mut events: tokio::sync::broadcast::Receiver<crate::net::NetEvent>,
    ttl_secs: u64,
    mut offers_changed: Option<watch::Receiver<u64>>,
    shutdown: Shutdown,
) {
    let changed = async |offers: &mut Option<watch::Receiver<u64>>| {
        let Some(receiver) = offers else { return std::future::pending().await };
        if receiver.changed().await.is_err() {
            // The plugin host stopped: nothing more will change.
            *offers = None;
            std::future::pending::<()>().await;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs((ttl_secs / 3).max(1)));
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let due = tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => true,
            () = changed(&mut offers_changed) => true,
            event = events.recv() => match event {
                Ok(crate::net::NetEvent::OffersSubscribed { .. }) => true,
                Ok(_) => false,
                // Missed events may have held a subscription: announce to be safe.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        if due {
            tokio::select! {
                _ = &mut stop => return,
                announced = hub.market().announce() => match announced {
                    Ok(count) => tracing::debug!(count, "announced offers"),
                    Err(e) => warn!(error = %e, "could not announce offers"),
                },
            }
        }
    }
}

/// Pays invoices from peers once the owner approves them (the invoice was answered "pending").
/// `events` is subscribed before the task is spawned, so an approval decided at once is not missed.
async fn pay_approved_invoices(
    hub: Hub,
    mut events: tokio::sync::broadcast::Receiver<crate::payments::HubEvent>,
    shutdown: Shutdown,
) {
    use crate::payments::HubEvent;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            event = events.recv() => match event {
                Ok(HubEvent::ApprovalDecided { approval }) => {
                    if let Err(e) = hub.market().pay_approved_invoice(&approval).await {
                        warn!(approval = approval.id, error = %e, "could not pay an approved invoice");
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "fell behind on hub events; some approved invoices may need paying by hand");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
