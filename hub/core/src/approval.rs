//! Approvals: spend requests waiting for the owner, and what the owner decided.

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountError};
use crate::budget::{Decision, SpendRequest, Subject};
use crate::ids::ChannelId;
use crate::time::Timestamp;

/// Where an approval stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApprovalState {
    Pending,
    Approved { by: String, at: Timestamp },
    Denied { by: String, at: Timestamp, reason: String },
    Expired { at: Timestamp },
}

/// The owner's verdict on a pending request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny { reason: String },
}

/// Why a verdict could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("approval {id} was already decided ({state})")]
    AlreadyDecided { id: u64, state: &'static str },
    #[error("approval {id} expired at {at:?} before it was decided")]
    Expired { id: u64, at: Timestamp },
}

/// What came of an approved spend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SpendOutcome {
    Paid { at: Timestamp, channel: Option<ChannelId> },
    /// Nothing was paid (no route, no capacity …); the amount no longer counts against the budget.
    Failed { at: Timestamp, reason: String },
}

/// The principal recorded when the budget itself decided (under the auto-approve threshold,
/// or refused outright).
pub const BUDGET_PRINCIPAL: &str = "budget";

/// Every spend request and what became of it: decided by the budget, waiting for the owner,
/// or decided by the owner. Approved ones count against the subject's budget until they fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: u64,
    pub request: SpendRequest,
    pub expires_at: Timestamp,
    pub state: ApprovalState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<SpendOutcome>,
}

impl ApprovalState {
    pub fn name(&self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved { .. } => "approved",
            ApprovalState::Denied { .. } => "denied",
            ApprovalState::Expired { .. } => "expired",
        }
    }
}

impl Approval {
    pub fn new(id: u64, request: SpendRequest, expires_at: Timestamp) -> Approval {
        Approval { id, request, expires_at, state: ApprovalState::Pending, outcome: None }
    }

    /// Records what the budget decided for a new request: approved and denied requests are
    /// decided at once by [`BUDGET_PRINCIPAL`], pending ones wait until `expires_at`.
    pub fn from_decision(id: u64, request: SpendRequest, decision: &Decision, now: Timestamp) -> Approval {
        let (state, expires_at) = match decision {
            Decision::Approved => (ApprovalState::Approved { by: BUDGET_PRINCIPAL.to_owned(), at: now }, now),
            Decision::Pending { expires_at } => (ApprovalState::Pending, *expires_at),
            Decision::Denied { reason } => {
                (ApprovalState::Denied { by: BUDGET_PRINCIPAL.to_owned(), at: now, reason: reason.to_string() }, now)
            }
        };
        Approval { id, request, expires_at, state, outcome: None }
    }

    /// Whether this request's amount counts against its subject's budget: it was approved (by
    /// the budget or the owner) and its payment has not failed.
    pub fn counts_against_budget(&self) -> bool {
        matches!(self.state, ApprovalState::Approved { .. })
            && !matches!(self.outcome, Some(SpendOutcome::Failed { .. }))
    }

    pub fn is_pending(&self) -> bool {
        self.state == ApprovalState::Pending
    }

    /// Marks a pending approval expired once its time has come; true if it changed.
    pub fn expire_if_due(&mut self, now: Timestamp) -> bool {
        if self.is_pending() && now >= self.expires_at {
            self.state = ApprovalState::Expired { at: now };
            return true;
        }
        false
    }

    /// Records the owner's verdict, who gave it and when. A request decides once.
    pub fn decide(&mut self, verdict: Verdict, by: &str, now: Timestamp) -> Result<(), ApprovalError> {
        self.expire_if_due(now);
        match &self.state {
            ApprovalState::Pending => {}
            ApprovalState::Expired { at } => return Err(ApprovalError::Expired { id: self.id, at: *at }),
            other => return Err(ApprovalError::AlreadyDecided { id: self.id, state: other.name() }),
        }
        self.state = match verdict {
            Verdict::Approve => ApprovalState::Approved { by: by.to_owned(), at: now },
            Verdict::Deny { reason } => ApprovalState::Denied { by: by.to_owned(), at: now, reason },
        };
        Ok(())
    }
}

/// What `subject` has committed to spend since `since`: the approved requests made then.
pub fn committed_since<'a>(
    approvals: impl IntoIterator<Item = &'a Approval>,
    subject: &Subject,
    since: Timestamp,
) -> Result<Amount, AmountError> {
    approvals
        .into_iter()
        .filter(|a| &a.request.subject == subject && a.request.created_at >= since && a.counts_against_budget())
        .try_fold(Amount::ZERO, |sum, a| sum.checked_add(a.request.amount))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::amount::Amount;
    use crate::budget::Subject;

    fn pending() -> Approval {
        let request = SpendRequest {
            subject: Subject::Device("fridge".into()),
            payee: "grocer".into(),
            amount: Amount::from_base_units(500),
            memo: "milk".into(),
            reference: "r-1".into(),
            created_at: Timestamp(1_000),
        };
        Approval::new(7, request, Timestamp(1_600))
    }

    #[test]
    fn a_new_approval_is_pending() {
        let approval = pending();
        assert!(approval.is_pending());
        assert_eq!(approval.state.name(), "pending");
    }

    #[test]
    fn approving_records_who_and_when() {
        let mut approval = pending();
        assert_eq!(approval.decide(Verdict::Approve, "owner", Timestamp(1_200)), Ok(()));
        assert_eq!(approval.state, ApprovalState::Approved { by: "owner".into(), at: Timestamp(1_200) });
        assert!(!approval.is_pending());
    }

    #[test]
    fn denying_records_who_when_and_why() {
        let mut approval = pending();
        approval.decide(Verdict::Deny { reason: "too dear".into() }, "owner", Timestamp(1_599)).unwrap();
        assert_eq!(
            approval.state,
            ApprovalState::Denied { by: "owner".into(), at: Timestamp(1_599), reason: "too dear".into() }
        );
    }

    #[test]
    fn a_request_is_decided_only_once() {
        let mut approval = pending();
        approval.decide(Verdict::Approve, "owner", Timestamp(1_200)).unwrap();
        let decided = approval.clone();
        assert_eq!(
            approval.decide(Verdict::Deny { reason: "changed my mind".into() }, "other", Timestamp(1_300)),
            Err(ApprovalError::AlreadyDecided { id: 7, state: "approved" })
        );
        assert_eq!(approval, decided);
        let mut denied = pending();
        denied.decide(Verdict::Deny { reason: "no".into() }, "owner", Timestamp(1_200)).unwrap();
        assert_eq!(
            denied.decide(Verdict::Approve, "owner", Timestamp(1_201)),
            Err(ApprovalError::AlreadyDecided { id: 7, state: "denied" })
        );
    }

    #[test]
    fn a_verdict_after_expiry_is_refused_and_the_approval_expires() {
        let mut approval = pending();
        assert_eq!(
            approval.decide(Verdict::Approve, "owner", Timestamp(1_600)),
            Err(ApprovalError::Expired { id: 7, at: Timestamp(1_600) })
        );
        assert_eq!(approval.state, ApprovalState::Expired { at: Timestamp(1_600) });
        // Once expired, it stays expired with the first time it was seen expired.
        assert_eq!(
            approval.decide(Verdict::Approve, "owner", Timestamp(9_999)),
            Err(ApprovalError::Expired { id: 7, at: Timestamp(1_600) })
        );
    }

    #[test]
    fn expire_if_due_changes_only_a_pending_approval_at_or_after_its_expiry() {
        let mut approval = pending();
        assert!(!approval.expire_if_due(Timestamp(1_599)));
        assert!(approval.is_pending());
        assert!(approval.expire_if_due(Timestamp(1_600)));
        assert_eq!(approval.state, ApprovalState::Expired { at: Timestamp(1_600) });
        assert!(!approval.expire_if_due(Timestamp(1_700)));
        assert_eq!(approval.state.name(), "expired");

        let mut decided = pending();
        decided.decide(Verdict::Approve, "owner", Timestamp(1_000)).unwrap();
        assert!(!decided.expire_if_due(Timestamp(5_000)));
        assert_eq!(decided.state.name(), "approved");
    }

    #[test]
    fn approvals_round_trip_through_json() {
        let mut approval = pending();
        approval.decide(Verdict::Deny { reason: "no".into() }, "owner", Timestamp(1_200)).unwrap();
        let json = serde_json::to_string(&approval).unwrap();
        assert!(json.contains(r#""state":{"state":"denied","by":"owner","at":1200,"reason":"no"}"#), "{json}");
        assert_eq!(serde_json::from_str::<Approval>(&json).unwrap(), approval);
        let verdict: Verdict = serde_json::from_str(r#"{"verdict":"deny","reason":"x"}"#).unwrap();
        assert_eq!(verdict, Verdict::Deny { reason: "x".into() });
        assert_eq!(serde_json::from_str::<Verdict>(r#"{"verdict":"approve"}"#).unwrap(), Verdict::Approve);
        assert!(serde_json::from_str::<Verdict>(r#"{"verdict":"maybe"}"#).is_err());
    }
}
