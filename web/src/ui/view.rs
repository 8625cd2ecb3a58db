//! The pages' templates and what they show, already formatted: amounts in the currency's units
//! with its code, times as UTC text with a machine-readable `datetime`. Templates escape every
//! value (askama's HTML escaping stays on); nothing here builds HTML.

use askama::Template;
use machinomy_core::{Amount, Approval, ApprovalState, Currency, Direction, SpendingEntry, Subject, Timestamp};

use crate::model::{BudgetView, DeviceView};

use super::session::Flash;

/// An instant as shown: `2026-11-24 12:00 UTC`, and `2026-11-24T12:00:00Z` for `<time datetime>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct When {
    pub(crate) iso: String,
    pub(crate) text: String,
}

impl When {
    pub(crate) fn new(at: Timestamp) -> When {
        let secs = at.secs() % 86_400;
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        let date = at.date_string();
        When { iso: format!("{date}T{h:02}:{m:02}:{s:02}Z"), text: format!("{date} {h:02}:{m:02} UTC") }
    }
}

/// `1.5 USD`: never raw base units.
pub(crate) fn money(currency: &Currency, amount: Amount) -> String {
    currency.format(amount)
}

/// Who asks for a spend: its kind (`device`, `plugin`, `peer`) and a name to show.
fn asker(subject: &Subject, devices: &[DeviceView]) -> (&'static str, String) {
    match subject {
        Subject::Device(id) => {
            let name = devices.iter().find(|d| d.id.as_str() == id).map(|d| d.name.as_str());
            match name {
                Some(name) if name != id => ("device", format!("{name} ({id})")),
                _ => ("device", id.clone()),
            }
        }
        Subject::Plugin(name) => ("plugin", name.clone()),
        Subject::Peer(key) => ("peer", key.clone()),
    }
}

/// What every signed-in page shares: the navigation, the session's CSRF token, a flash.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) title: &'static str,
    pub(crate) hub: String,
    /// Which navigation entry is the current page.
    pub(crate) active: &'static str,
    pub(crate) csrf: String,
    /// Pending approvals, shown in the title and the navigation.
    pub(crate) pending: u64,
    pub(crate) flash: Option<Flash>,
}

/// A pending spend, as the approvals page and the dashboard list it.
#[derive(Clone, Debug)]
pub(crate) struct PendingRow {
    pub(crate) id: u64,
    pub(crate) kind: &'static str,
    pub(crate) asker: String,
    pub(crate) payee: String,
    pub(crate) amount: String,
    pub(crate) memo: String,
    pub(crate) created: When,
    pub(crate) expires: When,
    /// The deny form's reason as typed, and what is wrong with it.
    pub(crate) reason: String,
    pub(crate) reason_error: Option<String>,
}

impl PendingRow {
    pub(crate) fn new(approval: &Approval, currency: &Currency, devices: &[DeviceView]) -> PendingRow {
        let (kind, asker) = asker(&approval.request.subject, devices);
        PendingRow {
            id: approval.id,
            kind,
            asker,
            payee: approval.request.payee.clone(),
            amount: money(currency, approval.request.amount),
            memo: approval.request.memo.clone(),
            created: When::new(approval.request.created_at),
            expires: When::new(approval.expires_at),
            reason: String::new(),
            reason_error: None,
        }
    }
}

/// A decided (or expired) spend on the approvals page.
#[derive(Clone, Debug)]
pub(crate) struct DecidedRow {
    pub(crate) id: u64,
    pub(crate) kind: &'static str,
    pub(crate) asker: String,
    pub(crate) payee: String,
    pub(crate) amount: String,
    pub(crate) memo: String,
    pub(crate) state: &'static str,
    pub(crate) by: String,
    pub(crate) at: When,
    pub(crate) reason: String,
}

impl DecidedRow {
    pub(crate) fn new(approval: &Approval, currency: &Currency, devices: &[DeviceView]) -> DecidedRow {
        let (kind, asker) = asker(&approval.request.subject, devices);
        let (by, at, reason) = match &approval.state {
            ApprovalState::Pending => (String::new(), approval.request.created_at, String::new()),
            ApprovalState::Approved { by, at } => (by.clone(), *at, String::new()),
            ApprovalState::Denied { by, at, reason } => (by.clone(), *at, reason.clone()),
            ApprovalState::Expired { at } => (String::new(), *at, String::new()),
        };
        DecidedRow {
            id: approval.id,
            kind,
            asker,
            payee: approval.request.payee.clone(),
            amount: money(currency, approval.request.amount),
            memo: approval.request.memo.clone(),
            state: approval.state.name(),
            by,
            at: When::new(at),
            reason,
        }
    }
}

/// A budget and what was spent against it this period.
#[derive(Clone, Debug)]
pub(crate) struct BudgetRow {
    pub(crate) subject: String,
    pub(crate) period: String,
    pub(crate) spent: String,
    pub(crate) limit: String,
    pub(crate) auto_approve: String,
    /// Spent as a whole percentage of the limit, at most 100 (for the bar).
    pub(crate) percent: u8,
    pub(crate) resets: When,
}

impl BudgetRow {
    pub(crate) fn new(view: &BudgetView) -> BudgetRow {
        let (spent, limit) = (view.spent_this_period.base_units(), view.budget.limit.base_units());
        let percent = if limit == 0 { 100 } else { spent.saturating_mul(100).checked_div(limit).unwrap_or(100) };
        BudgetRow {
            subject: view.budget.subject.to_string(),
            period: view.budget.period.to_string(),
            spent: money(&view.currency, view.spent_this_period),
            limit: money(&view.currency, view.budget.limit),
            auto_approve: money(&view.currency, view.budget.auto_approve),
            percent: u8::try_from(percent.min(100)).unwrap_or(100),
            resets: When::new(view.period_end),
        }
    }
}

/// A payment made (`out`) or received (`in`).
#[derive(Clone, Debug)]
pub(crate) struct PaymentRow {
    pub(crate) at: When,
    pub(crate) direction: &'static str,
    pub(crate) subject: String,
    pub(crate) counterparty: String,
    pub(crate) amount: String,
    pub(crate) memo: String,
}

impl PaymentRow {
    pub(crate) fn new(entry: &SpendingEntry, currency: &Currency) -> PaymentRow {
        PaymentRow {
            at: When::new(entry.at),
            direction: match entry.direction {
                Direction::Out => "out",
                Direction::In => "in",
            },
            subject: entry.subject.to_string(),
            counterparty: entry.counterparty.clone(),
            amount: money(currency, entry.amount),
            memo: entry.memo.clone(),
        }
    }
}

/// How many of something are up, of how many; `None` on the page when that part of the hub
/// is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Count {
    pub(crate) up: usize,
    pub(crate) total: usize,
}

#[derive(Template, Debug)]
#[template(path = "dashboard.html")]
pub(crate) struct DashboardPage {
    pub(crate) layout: Layout,
    pub(crate) pending_total: usize,
    pub(crate) pending_head: Vec<PendingRow>,
    pub(crate) budgets: Vec<BudgetRow>,
    pub(crate) payments: Vec<PaymentRow>,
    pub(crate) channels_open: u64,
    pub(crate) devices: Option<Count>,
    pub(crate) plugins: Option<Count>,
    pub(crate) peers: Option<Count>,
}

#[derive(Template, Debug)]
#[template(path = "approvals.html")]
pub(crate) struct ApprovalsPage {
    pub(crate) layout: Layout,
    pub(crate) pending: Vec<PendingRow>,
    pub(crate) decided: Vec<DecidedRow>,
}

#[derive(Template, Debug)]
#[template(path = "setup.html")]
pub(crate) struct SetupPage {
    pub(crate) form_token: String,
    pub(crate) password_error: Option<String>,
    pub(crate) confirm_error: Option<String>,
}

#[derive(Template, Debug)]
#[template(path = "login.html")]
pub(crate) struct LoginPage {
    pub(crate) form_token: String,
    /// Shown beside the password field.
    pub(crate) error: Option<String>,
    /// A note above the form (signed out, password set …).
    pub(crate) note: Option<String>,
}

#[derive(Template, Debug)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage {
    pub(crate) reason: String,
    pub(crate) message: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_text_with_an_iso_datetime() {
        let when = When::new(Timestamp(1_795_521_600 + 3_723));
        assert_eq!(when.iso, "2026-11-24T13:02:03Z");
        assert_eq!(when.text, "2026-11-24 13:02 UTC");
    }

    #[test]
    fn amounts_are_in_units_with_the_code() {
        assert_eq!(money(&Currency::usd(), Amount::from_base_units(1_500_000_000)), "1.5 USD");
        assert_eq!(money(&Currency::usd(), Amount::from_base_units(4_000)), "0.000004 USD");
    }
}
