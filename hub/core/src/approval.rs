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
    Paid {
        at: Timestamp,
        channel: Option<ChannelId>,
        /// What the payment moved, which may be less than asked (a service's price under the
        /// most the buyer would pay): the budget counts this. Absent in approvals stored before
        /// it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Amount>,
    },
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

    /// What this request takes from its budget: what its payment moved once paid, else the
    /// amount asked; nothing unless it [counts](Self::counts_against_budget).
    pub fn committed_amount(&self) -> Amount {
        if !self.counts_against_budget() {
            return Amount::ZERO;
        }
        match &self.outcome {
            Some(SpendOutcome::Paid { amount: Some(paid), .. }) => *paid,
            _ => self.request.amount,
        }
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
        .try_fold(Amount::ZERO, |sum, a| sum.checked_add(a.committed_amount()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

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

    fn request_at(subject: &str, amount: u128, created_at: u64) -> SpendRequest {
        SpendRequest {
            subject: subject.parse().unwrap(),
            payee: "grocer".into(),
            amount: Amount::from_base_units(amount),
            memo: String::new(),
            reference: String::new(),
            created_at: Timestamp(created_at),
        }
    }

    #[test]
    fn from_decision_records_the_budget_as_the_decider() {
        let now = Timestamp(1_000);
        let approved = Approval::from_decision(1, request_at("device:fridge", 5, 1_000), &Decision::Approved, now);
        assert_eq!(approved.state, ApprovalState::Approved { by: BUDGET_PRINCIPAL.into(), at: now });
        assert!(approved.counts_against_budget());

        let expires_at = Timestamp(1_600);
        let pending =
            Approval::from_decision(2, request_at("device:fridge", 5, 1_000), &Decision::Pending { expires_at }, now);
        assert!(pending.is_pending());
        assert_eq!(pending.expires_at, expires_at);
        assert!(!pending.counts_against_budget());

        let denied = Decision::Denied { reason: crate::budget::DenyReason::ZeroAmount };
        let denied = Approval::from_decision(3, request_at("device:fridge", 0, 1_000), &denied, now);
        assert!(matches!(&denied.state, ApprovalState::Denied { by, at, .. } if by == BUDGET_PRINCIPAL && *at == now));
        assert!(!denied.counts_against_budget());
        // A decided request cannot be decided again by the owner.
        let mut again = denied.clone();
        assert_eq!(
            again.decide(Verdict::Approve, "owner", now),
            Err(ApprovalError::AlreadyDecided { id: 3, state: "denied" })
        );
    }

    #[test]
    fn only_approved_requests_whose_payment_did_not_fail_count_against_the_budget() {
        let mut approval = pending();
        assert!(!approval.counts_against_budget());
        approval.decide(Verdict::Approve, "owner", Timestamp(1_100)).unwrap();
        assert!(approval.counts_against_budget());
        approval.outcome = Some(SpendOutcome::Paid { at: Timestamp(1_101), channel: None, amount: None });
        assert!(approval.counts_against_budget());
        assert_eq!(approval.committed_amount(), approval.request.amount);
        // Paid for less than asked: the budget counts what moved.
        let less = Amount::from_base_units(approval.request.amount.base_units() / 2);
        approval.outcome = Some(SpendOutcome::Paid { at: Timestamp(1_101), channel: None, amount: Some(less) });
        assert_eq!(approval.committed_amount(), less);
        approval.outcome = Some(SpendOutcome::Failed { at: Timestamp(1_101), reason: "no route".into() });
        assert!(!approval.counts_against_budget());
        let mut expired = pending();
        expired.expire_if_due(Timestamp(2_000));
        assert!(!expired.counts_against_budget());
    }

    #[test]
    fn committed_since_sums_the_subjects_counting_requests_made_from_then() {
        let now = Timestamp(1_000);
        let mut failed =
            Approval::from_decision(4, request_at("device:fridge", 1_000, 2_000), &Decision::Approved, now);
        failed.outcome = Some(SpendOutcome::Failed { at: now, reason: "no route".into() });
        let mut owner_approved = Approval::new(5, request_at("device:fridge", 40, 2_500), Timestamp(9_000));
        owner_approved.decide(Verdict::Approve, "owner", Timestamp(2_600)).unwrap();
        let approvals = vec![
            Approval::from_decision(1, request_at("device:fridge", 100, 500), &Decision::Approved, now),
            Approval::from_decision(2, request_at("device:fridge", 7, 1_500), &Decision::Approved, now),
            Approval::from_decision(3, request_at("device:oven", 9, 1_500), &Decision::Approved, now),
            failed,
            owner_approved,
            Approval::new(6, request_at("device:fridge", 300, 2_700), Timestamp(9_000)),
        ];
        let fridge: Subject = "device:fridge".parse().unwrap();
        assert_eq!(committed_since(&approvals, &fridge, Timestamp(0)), Ok(Amount::from_base_units(147)));
        assert_eq!(committed_since(&approvals, &fridge, Timestamp(1_500)), Ok(Amount::from_base_units(47)));
        assert_eq!(committed_since(&approvals, &fridge, Timestamp(1_501)), Ok(Amount::from_base_units(40)));
        assert_eq!(committed_since(&approvals, &fridge, Timestamp(3_000)), Ok(Amount::ZERO));
    }

    #[test]
    fn committed_since_reports_overflow() {
        let now = Timestamp(1_000);
        let approvals = vec![
            Approval::from_decision(1, request_at("device:fridge", u128::MAX, 1_000), &Decision::Approved, now),
            Approval::from_decision(2, request_at("device:fridge", 1, 1_000), &Decision::Approved, now),
        ];
        let fridge: Subject = "device:fridge".parse().unwrap();
        assert_eq!(committed_since(&approvals, &fridge, Timestamp(0)), Err(AmountError::Overflow));
    }

    #[test]
    fn outcomes_serialize_with_an_outcome_tag() {
        let paid = SpendOutcome::Paid { at: Timestamp(5), channel: Some(ChannelId::from_bytes([1; 32])), amount: None };
        let json = serde_json::to_string(&paid).unwrap();
        assert!(json.starts_with(r#"{"outcome":"paid","at":5"#), "{json}");
        assert_eq!(serde_json::from_str::<SpendOutcome>(&json).unwrap(), paid);
        let mut approval = pending();
        approval.outcome = Some(SpendOutcome::Failed { at: Timestamp(5), reason: "x".into() });
        let json = serde_json::to_string(&approval).unwrap();
        assert_eq!(serde_json::from_str::<Approval>(&json).unwrap(), approval);
        // Stored approvals from before outcomes existed still read.
        let old = serde_json::to_string(&pending()).unwrap();
        assert!(!old.contains("outcome"));
        assert_eq!(serde_json::from_str::<Approval>(&old).unwrap(), pending());
    }
}
