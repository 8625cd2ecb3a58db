//! The web UI's live feed: the books' events (approvals, payments, channels) and the bridge's
//! (devices) told as the web layer's [`LiveEvent`]s on one bounded broadcast. One task owns the
//! sender; the hub keeps only a weak handle to subscribe pages with, so when the task stops at
//! shutdown every page's event stream ends and the API can drain.

use machinomy_core::Direction;
use machinomy_web::model::LiveEvent;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::bridge::BridgeEvent;
use crate::daemon::Shutdown;
use crate::payments::HubEvent;

/// Events a slow page may fall behind by before it is told to resync.
pub const CAPACITY: usize = 256;

/// What a page shows of a book event; `None` for what no page shows.
pub fn from_hub(event: &HubEvent) -> Option<LiveEvent> {
    Some(match event {
        HubEvent::ApprovalCreated { approval } | HubEvent::ApprovalDecided { approval } => {
            LiveEvent::Approval { id: approval.id, state: approval.state.name().to_owned() }
        }
        HubEvent::PaymentReceived { amount, .. } => LiveEvent::Payment { direction: Direction::In, amount: *amount },
        HubEvent::PaymentSent { amount, .. } => LiveEvent::Payment { direction: Direction::Out, amount: *amount },
        HubEvent::ChannelChanged { channel } => LiveEvent::Channel { id: *channel },
        // Its payment was already told as `PaymentReceived`.
        HubEvent::InvoicePaid { .. } => return None,
    })
}

/// What a page shows of a bridge event.
pub fn from_bridge(event: &BridgeEvent) -> LiveEvent {
    let device = match event {
        BridgeEvent::Availability { device, .. }
        | BridgeEvent::State { device, .. }
        | BridgeEvent::Event { device, .. }
        | BridgeEvent::Paired { device }
        | BridgeEvent::Removed { device } => device,
    };
    LiveEvent::Device { id: device.clone() }
}

/// A receiver's next event as a page sees it: `Resync` after falling behind, `None` when the
/// source is gone.
fn next<T>(received: Result<T, RecvError>, map: impl FnOnce(T) -> Option<LiveEvent>) -> Option<Option<LiveEvent>> {
    match received {
        Ok(event) => Some(map(event)),
        Err(RecvError::Lagged(_)) => Some(Some(LiveEvent::Resync)),
        Err(RecvError::Closed) => None,
    }
}

/// Feeds `sender` until shutdown (or until both sources close), then drops it. The caller
/// subscribes `books` and `bridge` before spawning this, so nothing after start-up is missed.
pub async fn feed(
    mut books: broadcast::Receiver<HubEvent>,
    sender: broadcast::Sender<LiveEvent>,
    mut bridge: Option<broadcast::Receiver<BridgeEvent>>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let received = tokio::select! {
            _ = &mut stop => return,
            event = books.recv() => match next(event, |e| from_hub(&e)) {
                Some(live) => live,
                None => return,
            },
            event = async { match &mut bridge { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                match next(event, |e| Some(from_bridge(&e))) {
                    Some(live) => live,
                    None => {
                        bridge = None;
                        continue;
                    }
                }
            }
        };
        // No page open is no error.
        if let Some(live) = received {
            let _ = sender.send(live);
        }
    }
}
