//! Devices' spend requests: verified against the key each device registered, decided by its
//! budget, paid over a channel, answered on `spend/result`. A pending request is answered again
//! when the owner decides it. A request id is used once per device: a replay is refused.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use machinomy_core::{
    Approval, ApprovalState, DeviceId, SpendRequest, SpendRequestMessage, SpendResultMessage, SpendStatus, SpendTarget,
    Subject, TopicKind, VerifiedSpendRequest,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Bridge;
use crate::hub::now;
use crate::market::{Market, MarketError};
use crate::payments::{HubEvent, Payments};
use crate::store::{SpendRef, Write};

/// Spend requests waiting for the worker; beyond this a device is told the hub is busy.
pub(super) const QUEUE: usize = 256;
/// Spend requests handled at once (each may wait on a payment over the network).
const CONCURRENT: usize = 16;
/// How a service target is written in an approval's payee.
const SERVICE_PREFIX: &str = "service:";

#[derive(Debug)]
pub(super) enum Job {
    Request { device: DeviceId, payload: Vec<u8> },
}

pub(super) struct Worker {
    bridge: Bridge,
    payments: Payments,
    market: Market,
    /// Request ids being handled now, so a replay racing the original is refused too.
    in_flight: Arc<Mutex<HashSet<(DeviceId, String)>>>,
}

impl Worker {
    pub(super) fn new(bridge: Bridge, payments: Payments, market: Market) -> Worker {
        Worker { bridge, payments, market, in_flight: Arc::new(Mutex::new(HashSet::new())) }
    }

    pub(super) async fn run(
        self,
        mut jobs: mpsc::Receiver<Job>,
        mut decisions: broadcast::Receiver<HubEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut running = JoinSet::new();
        let this = Arc::new(self);
        loop {
            // Take new work only while there is room; finished work frees room.
            let room = running.len() < CONCURRENT;
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => break,
                Some(_) = running.join_next(), if !running.is_empty() => {}
                job = jobs.recv(), if room => match job {
                    Some(Job::Request { device, payload }) => {
                        let this = this.clone();
                        running.spawn(async move { this.request(device, payload).await });
                    }
                    None => break,
                },
                event = decisions.recv(), if room => match event {
                    Ok(HubEvent::ApprovalDecided { approval }) => {
                        if let Subject::Device(device) = &approval.request.subject
                            && let Ok(device) = device.parse::<DeviceId>()
                        {
                            let this = this.clone();
                            running.spawn(async move { this.decided(device, approval).await });
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "missed approval decisions; those devices are not told");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        running.shutdown().await;
    }

    async fn request(&self, device: DeviceId, payload: Vec<u8>) {
        let topic = TopicKind::SpendRequest.topic(&device);
        let message = match SpendRequestMessage::parse(&payload) {
            Ok(message) => message,
            Err(error) => return self.refuse(&device, &topic, &error.to_string(), None).await,
        };
        let id = message.request_id.clone();
        let verified = match self.verify(&device, message) {
            Ok(verified) => verified,
            Err(error) => {
                // Echoed only when it is an id a device could have meant.
                let echo = machinomy_core::device::valid_request_id(&id).then_some(id.as_str());
                return self.refuse(&device, &topic, &error, echo).await;
            }
        };
        let key = (device.clone(), id.clone());
        let fresh = self.in_flight.lock().map(|mut set| set.insert(key.clone())).unwrap_or(false);
        if !fresh {
            return self.refuse(&device, &topic, &format!("request {id} is already being handled"), Some(&id)).await;
        }
        let result = self.decide_and_pay(&device, verified).await;
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&key);
        }
        match result {
            Ok(answer) => self.answer(&device, &answer).await,
            Err(error) => self.refuse(&device, &topic, &error, Some(&id)).await,
        }
    }

    fn verify(&self, device: &DeviceId, message: SpendRequestMessage) -> Result<VerifiedSpendRequest, String> {
        let key = self
            .bridge
            .registry()
            .spend_key(device)
            .ok_or_else(|| format!("device {device} registered no key, so it cannot spend"))?;
        message.verify(device, &key).map_err(|e| e.to_string())
    }

    /// The budget's decision, and the payment if it approves. Errors are for the `error` topic.
    async fn decide_and_pay(
        &self,
        device: &DeviceId,
        request: VerifiedSpendRequest,
    ) -> Result<SpendResultMessage, String> {
        let store = self.payments.store();
        if let Some(used) = store.spend_ref(device, &request.request_id).map_err(|e| e.to_string())? {
            return Err(format!(
                "request id {} was used already (approval #{}); a new request needs a new id",
                request.request_id, used.approval
            ));
        }
        let payee = match &request.target {
            SpendTarget::Payee(key) if *key == self.payments.public_key() => {
                return Err("the payee is this hub itself: a device spends by paying another hub".to_owned());
            }
            SpendTarget::Payee(key) => key.to_hex(),
            SpendTarget::Service(name) => format!("{SERVICE_PREFIX}{name}"),
        };
        let spend = SpendRequest {
            subject: Subject::Device(device.to_string()),
            payee,
            amount: request.amount,
            memo: request.memo.clone(),
            reference: request.request_id.clone(),
            created_at: now(),
        };
        let approval = self.payments.request_spend(spend, now()).await.map_err(|e| e.to_string())?;
        let used = SpendRef {
            device: device.clone(),
            request_id: request.request_id.clone(),
            approval: approval.id,
            body: request.body.clone(),
        };
        store.write(&[Write::SpendRef(&used)]).map_err(|e| e.to_string())?;
        store.commit().await.map_err(|e| e.to_string())?;
        Ok(match &approval.state {
            ApprovalState::Approved { .. } => self.pay(&approval, &request.target, request.body).await,
            _ => result_of(&approval),
        })
    }

    /// Pays an approved spend and says how it went.
    async fn pay(&self, approval: &Approval, target: &SpendTarget, body: String) -> SpendResultMessage {
        let outcome = match target {
            // The memo as the device wrote it: which device paid is this home's business (the
            // ledger keeps it as the subject), not the payee's.
            SpendTarget::Payee(payee) => {
                self.market.pay_with_approval(payee, &approval.request.memo, approval).await.map(|_| None)
            }
            SpendTarget::Service(service) => self
                .market
                .call_with_approval(service, body.into_bytes(), approval)
                .await
                .map(|bought| Some(String::from_utf8_lossy(&bought.body).into_owned())),
        };
        let (status, reason, result) = match outcome {
            Ok(result) => (SpendStatus::Paid, None, result),
            Err(MarketError::Denied(reason)) => (SpendStatus::Denied, Some(reason), None),
            Err(e) => (SpendStatus::Failed, Some(e.to_string()), None),
        };
        SpendResultMessage {
            request_id: approval.request.reference.clone(),
            status,
            reason,
            approval: Some(approval.id),
            result,
        }
    }

    /// The owner decided a device's pending request: pay it or say no.
    async fn decided(&self, device: DeviceId, approval: Approval) {
        let store = self.payments.store();
        let Ok(Some(used)) = store.spend_ref(&device, &approval.request.reference) else {
            // Not a request that came over MQTT (an API call, say): someone else answers it.
            return;
        };
        if used.approval != approval.id {
            return;
        }
        let answer = match &approval.state {
            // Unpaired while it waited: the owner's approval must not pay for a stranger.
            ApprovalState::Approved { .. } if self.bridge.registry().get(&device).is_none() => {
                const UNPAIRED: &str = "the device was unpaired";
                if let Err(e) = self.payments.spend_failed(approval.id, UNPAIRED, now()).await {
                    warn!(id = approval.id, error = %e, "could not release an unpaired device's spend");
                }
                SpendResultMessage {
                    status: SpendStatus::Failed,
                    reason: Some(UNPAIRED.to_owned()),
                    ..result_of(&approval)
                }
            }
            ApprovalState::Approved { .. } => {
                let target = match approval.request.payee.strip_prefix(SERVICE_PREFIX) {
                    Some(service) => SpendTarget::Service(service.to_owned()),
                    None => match approval.request.payee.parse() {
                        Ok(key) => SpendTarget::Payee(key),
                        Err(_) => return warn!(id = approval.id, "an approved device spend has no payee"),
                    },
                };
                self.pay(&approval, &target, used.body).await
            }
            _ => result_of(&approval),
        };
        self.answer(&device, &answer).await;
    }

    async fn answer(&self, device: &DeviceId, answer: &SpendResultMessage) {
        let Some(mqtt) = &self.bridge.inner.mqtt else { return };
        let payload = serde_json::to_vec(answer).unwrap_or_default();
        if let Err(e) = mqtt.publish(TopicKind::SpendResult.topic(device), payload, false).await {
            debug!(%device, error = %e, "could not answer a spend request");
        }
    }

    async fn refuse(&self, device: &DeviceId, topic: &str, error: &str, request_id: Option<&str>) {
        if let Some(mqtt) = &self.bridge.inner.mqtt {
            mqtt.publish_error(device, topic, error, request_id).await;
        }
    }
}

/// The answer for an approval that is not (yet) paid.
fn result_of(approval: &Approval) -> SpendResultMessage {
    let (status, reason) = match &approval.state {
        ApprovalState::Pending => (SpendStatus::Pending, Some("waits for the owner's approval".to_owned())),
        ApprovalState::Denied { reason, .. } => (SpendStatus::Denied, Some(reason.clone())),
        ApprovalState::Expired { .. } => (SpendStatus::Denied, Some("the owner did not decide in time".to_owned())),
        ApprovalState::Approved { .. } => (SpendStatus::Pending, None),
    };
    SpendResultMessage {
        request_id: approval.request.reference.clone(),
        status,
        reason,
        approval: Some(approval.id),
        result: None,
    }
}
