//! What the pages share, already formatted for people: amounts in the currency's units with its
//! code, times in the home's time zone with a machine-readable `datetime`, who asked for a
//! spend. Templates escape every value (askama's HTML escaping stays on); nothing here builds
//! HTML.

use askama::Template;
use jiff::tz::TimeZone;
use machinomy_core::{
    Amount, Approval, ApprovalState, Currency, Direction, SpendOutcome, SpendingEntry, Subject, Timestamp,
};

use crate::model::{BudgetView, DeviceView};

use super::session::Flash;

/// An instant as shown: `2026-11-24 13:00 CET`, and `2026-11-24T13:00:00+01:00` for
/// `<time datetime>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct When {
    pub(crate) iso: String,
    pub(crate) text: String,
}

impl When {
    pub(crate) fn new(at: Timestamp, zone: &TimeZone) -> When {
        let zoned = to_jiff(at).to_zoned_datetime(zone.clone());
        When {
            iso: zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            text: zoned.strftime("%Y-%m-%d %H:%M %Z").to_string(),
        }
    }
}

/// The same instant for jiff, clamped to the years it knows (up to 9999).
pub(crate) fn to_jiff(at: Timestamp) -> jiff::Timestamp {
    i64::try_from(at.secs())
        .ok()
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// The instant jiff gives, as the core counts time (instants before 1970 are 1970).
pub(crate) fn from_jiff(at: jiff::Timestamp) -> Timestamp {
    Timestamp(u64::try_from(at.as_second()).unwrap_or(0))
}

/// `1.50 USD`, `0.000004 USD`: never raw base units, and cents shown as people write money
/// (where the currency has them).
pub(crate) fn money(currency: &Currency, amount: Amount) -> String {
    currency.format(amount)
}

/// A public key or other long id, shortened for a table cell: `02a1b2c3…e4f5`.
pub(crate) fn short(id: &str) -> String {
    let chars = id.chars().count();
    if chars <= 16 {
        return id.to_owned();
    }
    let head: String = id.chars().take(8).collect();
    let tail: String = id.chars().skip(chars - 4).collect();
    format!("{head}…{tail}")
}

/// Who asks for a spend: its kind (`device`, `plugin`, `peer`) and a name to show.
pub(crate) fn asker(subject: &Subject, devices: &[DeviceView]) -> (&'static str, String) {
    match subject {
        Subject::Device(id) => {
            let name = devices.iter().find(|d| d.id.as_str() == id).map(|d| d.name.as_str());
            match name {
                Some(name) if name != id => ("device", format!("{name} ({id})")),
                _ => ("device", id.clone()),
            }
        }
        Subject::Plugin(name) => ("plugin", name.clone()),
        Subject::Peer(key) => ("peer", short(key)),
    }
}

/// The navigation: (path, label, key matched against [`Layout::active`]).
pub(crate) const NAV: [(&str, &str, &str); 9] = [
    ("/", "Dashboard", "dashboard"),
    ("/approvals", "Approvals", "approvals"),
    ("/spending", "Spending", "spending"),
    ("/budgets", "Budgets", "budgets"),
    ("/devices", "Devices", "devices"),
    ("/channels", "Channels", "channels"),
    ("/services", "Services", "services"),
    ("/plugins", "Plugins", "plugins"),
    ("/peers", "Peers", "peers"),
];

/// What every signed-in page shares: the navigation, the session's CSRF token, a flash, and
/// which live events make the page refresh its live parts.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) title: String,
    pub(crate) hub: String,
    /// Which navigation entry is the current page.
    pub(crate) active: &'static str,
    pub(crate) csrf: String,
    /// Pending approvals, shown in the title and the navigation.
    pub(crate) pending: u64,
    pub(crate) flash: Option<Flash>,
    /// Space-separated live event kinds (`approval payment`) the page follows.
    pub(crate) live_on: &'static str,
}

impl Layout {
    pub(crate) fn nav(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        &NAV
    }
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
    pub(crate) fn new(approval: &Approval, currency: &Currency, devices: &[DeviceView], zone: &TimeZone) -> PendingRow {
        let (kind, asker) = asker(&approval.request.subject, devices);
        PendingRow {
            id: approval.id,
            kind,
            asker,
            payee: approval.request.payee.clone(),
            amount: money(currency, approval.request.amount),
            memo: approval.request.memo.clone(),
            created: When::new(approval.request.created_at, zone),
            expires: When::new(approval.expires_at, zone),
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
    /// What became of an approved spend's payment: paid (how much), failed (why), or empty
    /// while it is on its way.
    pub(crate) outcome: String,
    pub(crate) payment_failed: bool,
}

impl DecidedRow {
    pub(crate) fn new(approval: &Approval, currency: &Currency, devices: &[DeviceView], zone: &TimeZone) -> DecidedRow {
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
            at: When::new(at, zone),
            reason,
            outcome: match &approval.outcome {
                None => String::new(),
                Some(SpendOutcome::Paid { amount: Some(amount), .. }) => format!("paid {}", money(currency, *amount)),
                Some(SpendOutcome::Paid { amount: None, .. }) => "paid".to_owned(),
                Some(SpendOutcome::Failed { reason, .. }) => format!("not paid: {reason}"),
            },
            payment_failed: matches!(approval.outcome, Some(SpendOutcome::Failed { .. })),
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
    /// The limit and threshold as a form would take them back (`2.5`, no code).
    pub(crate) limit_units: String,
    pub(crate) auto_approve_units: String,
    /// Spent as a whole percentage of the limit, at most 100 (for the bar).
    pub(crate) percent: u8,
    pub(crate) resets: When,
}

impl BudgetRow {
    pub(crate) fn new(view: &BudgetView, zone: &TimeZone) -> BudgetRow {
        let (spent, limit) = (view.spent_this_period.base_units(), view.budget.limit.base_units());
        let decimals = view.currency.decimals();
        BudgetRow {
            subject: view.budget.subject.to_string(),
            period: view.budget.period.to_string(),
            spent: money(&view.currency, view.spent_this_period),
            limit: money(&view.currency, view.budget.limit),
            auto_approve: money(&view.currency, view.budget.auto_approve),
            limit_units: view.budget.limit.format_decimal(decimals),
            auto_approve_units: view.budget.auto_approve.format_decimal(decimals),
            percent: percent(spent, limit),
            resets: When::new(view.period_end, zone),
        }
    }
}

/// `part` as a whole percentage of `whole`, at most 100 (a full bar when `whole` is zero).
pub(crate) fn percent(part: u128, whole: u128) -> u8 {
    let percent = if whole == 0 { 100 } else { part.saturating_mul(100).checked_div(whole).unwrap_or(100) };
    u8::try_from(percent.min(100)).unwrap_or(100)
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
    pub(crate) fn new(entry: &SpendingEntry, currency: &Currency, zone: &TimeZone) -> PaymentRow {
        PaymentRow {
            at: When::new(entry.at, zone),
            direction: match entry.direction {
                Direction::Out => "out",
                Direction::In => "in",
            },
            subject: entry.subject.to_string(),
            counterparty: short(&entry.counterparty),
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
    fn times_are_shown_in_the_homes_zone_with_an_iso_datetime() {
        let at = Timestamp(1_795_521_600 + 3_723);
        let utc = When::new(at, &TimeZone::UTC);
        assert_eq!(utc.iso, "2026-11-24T13:02:03+00:00");
        assert_eq!(utc.text, "2026-11-24 13:02 UTC");
        let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let local = When::new(at, &berlin);
        assert_eq!(local.iso, "2026-11-24T14:02:03+01:00");
        assert_eq!(local.text, "2026-11-24 14:02 CET");
        // Beyond what jiff counts (the year 9999) is shown as its last instant, not a panic.
        assert!(When::new(Timestamp(u64::MAX), &TimeZone::UTC).text.starts_with("9999-12-"));
    }

    #[test]
    fn amounts_are_in_units_with_the_code() {
        let usd = Currency::usd();
        assert_eq!(money(&usd, Amount::from_base_units(1_500_000_000)), "1.50 USD");
        assert_eq!(money(&usd, Amount::from_base_units(20_000_000_000)), "20.00 USD");
        assert_eq!(money(&usd, Amount::ZERO), "0.00 USD");
        assert_eq!(money(&usd, Amount::from_base_units(1_250_000_000)), "1.25 USD");
        assert_eq!(money(&usd, Amount::from_base_units(4_000)), "0.000004 USD");
        let whole = Currency::new("JPY", 0).unwrap();
        assert_eq!(money(&whole, Amount::from_base_units(150)), "150 JPY");
        let tenths = Currency::new("XTN", 1).unwrap();
        assert_eq!(money(&tenths, Amount::from_base_units(15)), "1.5 XTN");
        assert_eq!(money(&tenths, Amount::from_base_units(10)), "1.0 XTN");
    }

    #[test]
    fn long_ids_are_shortened_and_short_ones_kept() {
        assert_eq!(short("grocer"), "grocer");
        assert_eq!(short(&"ab".repeat(32)), "abababab…abab");
    }

    #[test]
    fn percentages_are_capped_and_an_empty_limit_is_full() {
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(300, 200), 100);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u128::MAX, 1), 100);
    }
}
