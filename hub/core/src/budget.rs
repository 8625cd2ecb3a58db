//! Budgets, spend requests and the policy that decides them.
//!
//! The rule the whole hub leans on: a spend is approved without asking only when it is at or
//! under the subject's auto-approve threshold *and* keeps the period's spending within the
//! limit. Everything else waits for the owner (pending) or is refused with a reason (denied).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::time::{Timestamp, UtcOffset, civil_from_days, days_from_civil, local_midnight};

/// Why a subject, period or request field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("subject {0:?} must be device:<id>, plugin:<name> or peer:<id>")]
    BadSubject(String),
    #[error("{kind} name {name:?} must be 1 to 64 characters of a-z, A-Z, 0-9, '_', '-' or '.'")]
    BadName { kind: &'static str, name: String },
    #[error("period {0:?} must be day, week or month")]
    BadPeriod(String),
    #[error("the auto-approve threshold {auto_approve} is above the limit {limit}")]
    ThresholdAboveLimit { auto_approve: Amount, limit: Amount },
}

/// Who spends: a device, a plugin, or a peer hub that invoices us.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Device(String),
    Plugin(String),
    Peer(String),
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Subject {
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Device(_) => "device",
            Subject::Plugin(_) => "plugin",
            Subject::Peer(_) => "peer",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Subject::Device(n) | Subject::Plugin(n) | Subject::Peer(n) => n,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

impl FromStr for Subject {
    type Err = BudgetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s.split_once(':').ok_or_else(|| BudgetError::BadSubject(s.to_owned()))?;
        let make = match kind {
            "device" => Subject::Device,
            "plugin" => Subject::Plugin,
            "peer" => Subject::Peer,
            _ => return Err(BudgetError::BadSubject(s.to_owned())),
        };
        if !valid_name(name) {
            return Err(BudgetError::BadName { kind: make(String::new()).kind(), name: name.to_owned() });
        }
        Ok(make(name.to_owned()))
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How often a budget starts again: at midnight on the home's clock (the zone the caller
/// passes in); weeks on Monday, months on the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// When the period containing `now` began, on the clock `zone`.
    pub fn start(self, now: Timestamp, zone: &dyn UtcOffset) -> Timestamp {
        // A clock set back past midnight could put that midnight after `now`.
        local_midnight(self.first_day(now.local_day_number(zone)), zone).min(now)
    }

    /// When the period containing `now` ends (the next one's start), on the clock `zone`.
    pub fn end(self, now: Timestamp, zone: &dyn UtcOffset) -> Timestamp {
        let first = self.first_day(now.local_day_number(zone));
        let next = match self {
            Period::Day => first + 1,
            Period::Week => first + 7,
            Period::Month => {
                let (year, month, _) = civil_from_days(first);
                if month == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, month + 1, 1) }
            }
        };
        local_midnight(next, zone).max(now.saturating_add_secs(1))
    }

    /// The first day (days since the epoch) of the period containing `day`.
    fn first_day(self, day: i64) -> i64 {
        match self {
            Period::Day => day,
            // 1970-01-01 was a Thursday: three days after a Monday.
            Period::Week => day - (day + 3).rem_euclid(7),
            Period::Month => {
                let (year, month, _) = civil_from_days(day);
                days_from_civil(year, month, 1)
            }
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        })
    }
}

impl FromStr for Period {
    type Err = BudgetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            _ => Err(BudgetError::BadPeriod(s.to_owned())),
        }
    }
}

/// How much a subject may spend per period, and how much per payment without asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BudgetRepr")]
pub struct Budget {
    pub subject: Subject,
    pub period: Period,
    pub limit: Amount,
    pub auto_approve: Amount,
}

/// The wire form, validated through [`Budget::new`] on the way in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetRepr {
    subject: Subject,
    period: Period,
    limit: Amount,
    auto_approve: Amount,
}

impl TryFrom<BudgetRepr> for Budget {
    type Error = BudgetError;
    fn try_from(r: BudgetRepr) -> Result<Self, Self::Error> {
        Budget::new(r.subject, r.period, r.limit, r.auto_approve)
    }
}

impl Budget {
    pub fn new(subject: Subject, period: Period, limit: Amount, auto_approve: Amount) -> Result<Budget, BudgetError> {
        if auto_approve > limit {
            return Err(BudgetError::ThresholdAboveLimit { auto_approve, limit });
        }
        Ok(Budget { subject, period, limit, auto_approve })
    }
}

/// Somebody wants to pay somebody.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRequest {
    pub subject: Subject,
    /// Whom it pays: a peer id or a service name.
    pub payee: String,
    pub amount: Amount,
    /// Why, in the requester's words (shown to the owner).
    pub memo: String,
    /// The requester's own id for the request (a device's `request_id`), echoed in answers.
    pub reference: String,
    pub created_at: Timestamp,
}

/// Why a spend was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum DenyReason {
    #[error("{0} has no budget")]
    NoBudget(Subject),
    #[error("a payment must be more than zero")]
    ZeroAmount,
    #[error("the amount overflows")]
    Overflow,
    #[error("too many requests are already waiting for the owner")]
    TooManyPending,
    #[error("the owner denied it: {0}")]
    Owner(String),
    #[error("the owner did not decide before it expired")]
    Expired,
}

/// The answer to a spend request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Decision {
    Approved,
    /// Queued for the owner until `expires_at`.
    Pending {
        expires_at: Timestamp,
    },
    Denied {
        reason: DenyReason,
    },
}

/// Decides a request against the subject's budget, given what it already spent this period.
pub fn evaluate(
    budget: Option<&Budget>,
    spent_this_period: Amount,
    request: &SpendRequest,
    now: Timestamp,
    approval_ttl_secs: u64,
) -> Decision {
    let Some(budget) = budget else {
        return Decision::Denied { reason: DenyReason::NoBudget(request.subject.clone()) };
    };
    if request.amount.is_zero() {
        return Decision::Denied { reason: DenyReason::ZeroAmount };
    }
    let Ok(after) = spent_this_period.checked_add(request.amount) else {
        return Decision::Denied { reason: DenyReason::Overflow };
    };
    if request.amount <= budget.auto_approve && after <= budget.limit {
        Decision::Approved
    } else {
        Decision::Pending { expires_at: now.saturating_add_secs(approval_ttl_secs) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::time::{SECONDS_PER_DAY, Utc};

    fn units(n: u128) -> Amount {
        Amount::from_base_units(n)
    }

    fn at(year: i64, month: u32, day: u32) -> Timestamp {
        Timestamp::from_civil(year, month, day)
    }

    fn fridge() -> Subject {
        Subject::Device("fridge".to_owned())
    }

    fn budget(limit: u128, auto_approve: u128) -> Budget {
        Budget::new(fridge(), Period::Day, units(limit), units(auto_approve)).unwrap()
    }

    fn request(amount: u128) -> SpendRequest {
        SpendRequest {
            subject: fridge(),
            payee: "grocer".to_owned(),
            amount: units(amount),
            memo: "milk".to_owned(),
            reference: "r-1".to_owned(),
            created_at: Timestamp(1_000),
        }
    }

    const NOW: Timestamp = Timestamp(1_000);
    const TTL: u64 = 600;
    const PENDING: Decision = Decision::Pending { expires_at: Timestamp(1_600) };

    // ---- subjects ----

    #[test]
    fn subjects_parse_and_display_as_kind_colon_name() {
        for (text, subject) in [
            ("device:fridge", Subject::Device("fridge".into())),
            ("plugin:weather.v2", Subject::Plugin("weather.v2".into())),
            ("peer:Hub_1-a", Subject::Peer("Hub_1-a".into())),
        ] {
            assert_eq!(text.parse::<Subject>(), Ok(subject.clone()));
            assert_eq!(subject.to_string(), text);
            assert_eq!(serde_json::to_string(&subject).unwrap(), format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Subject>(&format!("\"{text}\"")).unwrap(), subject);
        }
        assert_eq!(fridge().kind(), "device");
        assert_eq!(fridge().name(), "fridge");
    }

    #[test]
    fn bad_subjects_are_refused() {
        for text in ["", "fridge", "device", "robot:fridge", "Device:fridge", ":fridge"] {
            assert_eq!(text.parse::<Subject>(), Err(BudgetError::BadSubject(text.into())), "{text:?}");
        }
        let long = format!("device:{}", "a".repeat(65));
        for text in ["device:", "device:a:b", "plugin:a b", "peer:é", long.as_str()] {
            assert!(matches!(text.parse::<Subject>(), Err(BudgetError::BadName { .. })), "{text:?}");
        }
        assert_eq!("plugin:a/b".parse::<Subject>(), Err(BudgetError::BadName { kind: "plugin", name: "a/b".into() }));
        assert!("device:".parse::<Subject>().is_err());
        assert!(format!("device:{}", "a".repeat(64)).parse::<Subject>().is_ok());
        assert!(serde_json::from_str::<Subject>("\"robot:x\"").is_err());
        assert!(serde_json::from_str::<Subject>("{\"Device\":\"x\"}").is_err());
    }

    // ---- periods ----

    #[test]
    fn periods_parse_and_display() {
        for (text, period) in [("day", Period::Day), ("week", Period::Week), ("month", Period::Month)] {
            assert_eq!(text.parse::<Period>(), Ok(period));
            assert_eq!(period.to_string(), text);
            assert_eq!(serde_json::to_string(&period).unwrap(), format!("\"{text}\""));
        }
        assert_eq!("Day".parse::<Period>(), Err(BudgetError::BadPeriod("Day".into())));
        assert_eq!("year".parse::<Period>(), Err(BudgetError::BadPeriod("year".into())));
    }

    #[test]
    fn a_day_runs_from_midnight_to_midnight_utc() {
        let noon = at(2026, 11, 24).saturating_add_secs(12 * 3_600);
        assert_eq!(Period::Day.start(noon, &Utc), at(2026, 11, 24));
        assert_eq!(Period::Day.end(noon, &Utc), at(2026, 11, 25));
        assert_eq!(Period::Day.start(at(2026, 11, 24), &Utc), at(2026, 11, 24));
        let last_second = Timestamp(at(2026, 11, 25).secs() - 1);
        assert_eq!(Period::Day.start(last_second, &Utc), at(2026, 11, 24));
    }

    #[test]
    fn a_week_starts_on_monday() {
        // 2026-11-23 is a Monday, 2026-11-29 a Sunday.
        for day in 23..=29 {
            let t = at(2026, 11, day).saturating_add_secs(3_600);
            assert_eq!(Period::Week.start(t, &Utc), at(2026, 11, 23), "day {day}");
            assert_eq!(Period::Week.end(t, &Utc), at(2026, 11, 30), "day {day}");
        }
        assert_eq!(Period::Week.start(at(2026, 11, 30), &Utc), at(2026, 11, 30));
        let sunday_night = Timestamp(at(2026, 11, 30).0 - 1);
        assert_eq!(Period::Week.start(sunday_night, &Utc), at(2026, 11, 23));
        // Across a month and a year.
        assert_eq!(Period::Week.start(at(2026, 1, 1), &Utc), at(2025, 12, 29));
    }

    #[test]
    fn the_first_days_of_the_epoch_have_a_week_without_underflow() {
        // 1970-01-01 was a Thursday; its week began on Monday 1969-12-29, before any Timestamp.
        for secs in [0, 1, SECONDS_PER_DAY, 3 * SECONDS_PER_DAY + 5] {
            let t = Timestamp(secs);
            assert_eq!(Period::Week.start(t, &Utc), Timestamp(0), "{secs}");
            assert_eq!(Period::Week.end(t, &Utc), Timestamp(4 * SECONDS_PER_DAY), "{secs}");
        }
        assert_eq!(Period::Week.start(Timestamp(4 * SECONDS_PER_DAY), &Utc), Timestamp(4 * SECONDS_PER_DAY));
    }

    #[test]
    fn a_month_runs_from_the_first_to_the_first() {
        let mid = at(2026, 11, 24).saturating_add_secs(99);
        assert_eq!(Period::Month.start(mid, &Utc), at(2026, 11, 1));
        assert_eq!(Period::Month.end(mid, &Utc), at(2026, 12, 1));
        assert_eq!(Period::Month.start(at(2026, 12, 31), &Utc), at(2026, 12, 1));
        assert_eq!(Period::Month.end(at(2026, 12, 31), &Utc), at(2027, 1, 1));
        // A leap February has 29 days, a common one 28.
        assert_eq!(Period::Month.start(at(2024, 2, 29), &Utc), at(2024, 2, 1));
        assert_eq!(Period::Month.end(at(2024, 2, 29), &Utc), at(2024, 3, 1));
        assert_eq!(at(2024, 3, 1).0 - at(2024, 2, 1).0, 29 * SECONDS_PER_DAY);
        assert_eq!(
            Period::Month.end(at(2026, 2, 10), &Utc).0 - Period::Month.start(at(2026, 2, 10), &Utc).0,
            28 * SECONDS_PER_DAY
        );
        assert_eq!(
            Period::Month.end(at(2000, 2, 10), &Utc).0 - Period::Month.start(at(2000, 2, 10), &Utc).0,
            29 * SECONDS_PER_DAY
        );
        assert_eq!(
            Period::Month.end(at(2100, 2, 10), &Utc).0 - Period::Month.start(at(2100, 2, 10), &Utc).0,
            28 * SECONDS_PER_DAY
        );
    }

    #[test]
    fn periods_at_the_end_of_time_do_not_panic() {
        let zones: [&dyn UtcOffset; 3] = [&Utc, &|_| 14 * 3_600, &|_| -12 * 3_600];
        for period in [Period::Day, Period::Week, Period::Month] {
            for zone in zones {
                for now in [Timestamp(0), Timestamp(u64::MAX)] {
                    let (start, end) = (period.start(now, zone), period.end(now, zone));
                    assert!(start <= now && now <= end, "{period} {now:?}");
                }
            }
        }
    }

    /// Los Angeles in November 2026: eight hours behind UTC (PST).
    fn pacific(_at: Timestamp) -> i32 {
        -8 * 3_600
    }

    #[test]
    fn periods_begin_at_the_homes_midnight() {
        let eight_hours = 8 * 3_600;
        // 2026-11-24 07:00 UTC is still the 23rd in Los Angeles; 09:00 UTC is the 24th there.
        let late_on_the_23rd = at(2026, 11, 24).saturating_add_secs(7 * 3_600);
        let early_on_the_24th = at(2026, 11, 24).saturating_add_secs(9 * 3_600);
        assert_eq!(Period::Day.start(late_on_the_23rd, &pacific), at(2026, 11, 23).saturating_add_secs(eight_hours));
        assert_eq!(Period::Day.end(late_on_the_23rd, &pacific), at(2026, 11, 24).saturating_add_secs(eight_hours));
        assert_eq!(Period::Day.start(early_on_the_24th, &pacific), at(2026, 11, 24).saturating_add_secs(eight_hours));
        // Monday 2026-11-30 02:00 UTC is Sunday evening in Los Angeles: the week of the 23rd.
        let sunday_evening = at(2026, 11, 30).saturating_add_secs(2 * 3_600);
        assert_eq!(Period::Week.start(sunday_evening, &Utc), at(2026, 11, 30));
        assert_eq!(Period::Week.start(sunday_evening, &pacific), at(2026, 11, 23).saturating_add_secs(eight_hours));
        // 2026-12-01 03:00 UTC is still November there.
        let november_night = at(2026, 12, 1).saturating_add_secs(3 * 3_600);
        assert_eq!(Period::Month.start(november_night, &pacific), at(2026, 11, 1).saturating_add_secs(eight_hours));
        assert_eq!(Period::Month.end(november_night, &pacific), at(2026, 12, 1).saturating_add_secs(eight_hours));
    }

    #[test]
    fn a_day_that_changes_the_clock_starts_at_its_own_midnight() {
        // Berlin on 2026-03-29: midnight is still winter time (+1), the evening summer time (+2).
        let spring_forward = at(2026, 3, 29).saturating_add_secs(3_600);
        let berlin = move |at: Timestamp| if at < spring_forward { 3_600 } else { 7_200 };
        let evening = at(2026, 3, 29).saturating_add_secs(20 * 3_600);
        assert_eq!(Period::Day.start(evening, &berlin), Timestamp(at(2026, 3, 29).secs() - 3_600));
        // The next midnight is summer time: the day had 23 hours.
        assert_eq!(Period::Day.end(evening, &berlin), Timestamp(at(2026, 3, 30).secs() - 7_200));
    }

    // ---- budgets ----

    #[test]
    fn a_threshold_above_the_limit_is_refused() {
        assert_eq!(
            Budget::new(fridge(), Period::Day, units(10), units(11)),
            Err(BudgetError::ThresholdAboveLimit { auto_approve: units(11), limit: units(10) })
        );
        assert!(Budget::new(fridge(), Period::Day, units(10), units(10)).is_ok());
        assert!(Budget::new(fridge(), Period::Day, units(10), Amount::ZERO).is_ok());
    }

    #[test]
    fn budgets_round_trip_through_json_and_refuse_unknown_fields() {
        let b = Budget::new(fridge(), Period::Week, units(5_000), units(100)).unwrap();
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, r#"{"subject":"device:fridge","period":"week","limit":"5000","auto_approve":"100"}"#);
        assert_eq!(serde_json::from_str::<Budget>(&json).unwrap(), b);
        let extra = r#"{"subject":"device:fridge","period":"week","limit":"5000","auto_approve":"100","x":1}"#;
        assert!(serde_json::from_str::<Budget>(extra).is_err());
        let numeric = r#"{"subject":"device:fridge","period":"week","limit":5000,"auto_approve":"100"}"#;
        assert!(serde_json::from_str::<Budget>(numeric).is_err());
    }

    // ---- evaluate ----

    #[test]
    fn approves_at_or_under_the_threshold_within_the_limit() {
        let b = budget(1_000, 100);
        assert_eq!(evaluate(Some(&b), Amount::ZERO, &request(1), NOW, TTL), Decision::Approved);
        assert_eq!(evaluate(Some(&b), Amount::ZERO, &request(100), NOW, TTL), Decision::Approved);
        assert_eq!(evaluate(Some(&b), units(900), &request(100), NOW, TTL), Decision::Approved);
    }

    #[test]
    fn asks_the_owner_above_the_threshold() {
        let b = budget(1_000, 100);
        assert_eq!(evaluate(Some(&b), Amount::ZERO, &request(101), NOW, TTL), PENDING);
        assert_eq!(evaluate(Some(&b), Amount::ZERO, &request(5_000), NOW, TTL), PENDING);
    }

    #[test]
    fn asks_the_owner_when_the_period_limit_would_be_passed() {
        let b = budget(1_000, 100);
        assert_eq!(evaluate(Some(&b), units(901), &request(100), NOW, TTL), PENDING);
        assert_eq!(evaluate(Some(&b), units(1_000), &request(1), NOW, TTL), PENDING);
        // Already over (the owner approved more): still asks.
        assert_eq!(evaluate(Some(&b), units(2_000), &request(1), NOW, TTL), PENDING);
    }

    #[test]
    fn pending_expires_a_ttl_from_now_and_saturates() {
        let b = budget(1_000, 100);
        assert_eq!(
            evaluate(Some(&b), Amount::ZERO, &request(500), Timestamp(u64::MAX - 1), TTL),
            Decision::Pending { expires_at: Timestamp(u64::MAX) }
        );
    }

    #[test]
    fn denies_without_a_budget() {
        assert_eq!(
            evaluate(None, Amount::ZERO, &request(1), NOW, TTL),
            Decision::Denied { reason: DenyReason::NoBudget(fridge()) }
        );
    }

    #[test]
    fn denies_a_zero_amount() {
        let b = budget(1_000, 100);
        assert_eq!(
            evaluate(Some(&b), Amount::ZERO, &request(0), NOW, TTL),
            Decision::Denied { reason: DenyReason::ZeroAmount }
        );
    }

    #[test]
    fn denies_an_amount_that_overflows_the_spent_total() {
        let b = Budget::new(fridge(), Period::Day, Amount::MAX, Amount::MAX).unwrap();
        assert_eq!(
            evaluate(Some(&b), Amount::MAX, &request(1), NOW, TTL),
            Decision::Denied { reason: DenyReason::Overflow }
        );
    }

    #[test]
    fn a_zero_threshold_approves_nothing_without_the_owner() {
        let b = budget(1_000, 0);
        assert_eq!(evaluate(Some(&b), Amount::ZERO, &request(1), NOW, TTL), PENDING);
    }

    #[test]
    fn decisions_serialize_with_a_status_tag() {
        assert_eq!(serde_json::to_string(&Decision::Approved).unwrap(), r#"{"status":"approved"}"#);
        assert_eq!(serde_json::to_string(&PENDING).unwrap(), r#"{"status":"pending","expires_at":1600}"#);
        let denied = Decision::Denied { reason: DenyReason::NoBudget(fridge()) };
        let json = serde_json::to_string(&denied).unwrap();
        assert_eq!(json, r#"{"status":"denied","reason":{"reason":"no_budget","detail":"device:fridge"}}"#);
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), denied);
    }
}
