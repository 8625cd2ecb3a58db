//! The spending ledger: every payment made or received, and the reports read from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountError};
use crate::budget::Subject;
use crate::ids::ChannelId;
use crate::time::{Timestamp, UtcOffset, day_string};

/// Money out of the home or into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Out,
    In,
}

/// One payment made or received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendingEntry {
    pub at: Timestamp,
    pub direction: Direction,
    /// Who in the home paid (out) or sold (in).
    pub subject: Subject,
    /// The other party: payee (out) or payer (in).
    pub counterparty: String,
    pub amount: Amount,
    pub memo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelId>,
    /// The approval that allowed it, where the owner decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<u64>,
}

/// How a report groups payments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Subject,
    Payee,
    Day,
}

/// One line of a report: the totals of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The subject (`device:fridge`), the counterparty, or the day (`YYYY-MM-DD` on the home's
    /// clock).
    pub key: String,
    pub paid: Amount,
    pub received: Amount,
    pub payments: u64,
}

/// Totals of the entries in `[from, to)` grouped by `group`, ordered by key; days are those of
/// the home's clock `zone`.
pub fn report<'a>(
    entries: impl IntoIterator<Item = &'a SpendingEntry>,
    group: GroupBy,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    zone: &dyn UtcOffset,
) -> Result<Vec<ReportRow>, AmountError> {
    let mut rows: BTreeMap<String, ReportRow> = BTreeMap::new();
    for entry in entries {
        if from.is_some_and(|from| entry.at < from) || to.is_some_and(|to| entry.at >= to) {
            continue;
        }
        let key = match group {
            GroupBy::Subject => entry.subject.to_string(),
            GroupBy::Payee => entry.counterparty.clone(),
            GroupBy::Day => entry.at.local_date_string(zone),
        };
        let row = rows.entry(key).or_insert_with_key(|key| ReportRow {
            key: key.clone(),
            paid: Amount::ZERO,
            received: Amount::ZERO,
            payments: 0,
        });
        match entry.direction {
            Direction::Out => row.paid = row.paid.checked_add(entry.amount)?,
            Direction::In => row.received = row.received.checked_add(entry.amount)?,
        }
        row.payments += 1;
    }
    Ok(rows.into_values().collect())
}

/// The most days a daily series spans (a year, leap or not).
pub const MAX_SERIES_DAYS: usize = 366;

/// Why a daily series cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Amount(#[from] AmountError),
    #[error("the period must end after it starts")]
    EmptyPeriod,
    #[error("the period spans {days} days; a daily series spans at most {MAX_SERIES_DAYS}")]
    TooManyDays { days: u64 },
}

/// What each subject paid out on each day of a period: one amount per day per subject, days
/// with nothing included, so the series can be drawn as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailySpending {
    /// Every day of the period, `YYYY-MM-DD` on the home's clock, in order.
    pub days: Vec<String>,
    /// Subjects that paid anything, the biggest spender first; `paid[i]` is for `days[i]`.
    pub subjects: Vec<SubjectSeries>,
}

/// One subject's payments out, day by day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSeries {
    pub subject: Subject,
    pub paid: Vec<Amount>,
    pub total: Amount,
}

impl DailySpending {
    /// The total paid out on each day, by every subject together.
    pub fn day_totals(&self) -> Result<Vec<Amount>, AmountError> {
        let mut totals = vec![Amount::ZERO; self.days.len()];
        for series in &self.subjects {
            for (total, paid) in totals.iter_mut().zip(&series.paid) {
                *total = total.checked_add(*paid)?;
            }
        }
        Ok(totals)
    }
}

/// Payments out in `[from, to)`, per subject and per day of the home's clock `zone`.
pub fn daily_paid<'a>(
    entries: impl IntoIterator<Item = &'a SpendingEntry>,
    from: Timestamp,
    to: Timestamp,
    zone: &dyn UtcOffset,
) -> Result<DailySpending, ReportError> {
    if to <= from {
        return Err(ReportError::EmptyPeriod);
    }
    let first = from.local_day_number(zone);
    let last = Timestamp(to.secs() - 1).local_day_number(zone);
    let span = last.saturating_sub(first).saturating_add(1);
    let days = usize::try_from(span).ok().filter(|&d| d <= MAX_SERIES_DAYS);
    let Some(days) = days else {
        return Err(ReportError::TooManyDays { days: u64::try_from(span).unwrap_or(u64::MAX) });
    };
    let mut by_subject: BTreeMap<&Subject, Vec<Amount>> = BTreeMap::new();
    for entry in entries {
        if entry.direction != Direction::Out || entry.at < from || entry.at >= to {
            continue;
        }
        let index = entry.at.local_day_number(zone) - first;
        let series = by_subject.entry(&entry.subject).or_insert_with(|| vec![Amount::ZERO; days]);
        // The entry is inside [from, to), so its day is inside the series.
        if let Some(paid) = usize::try_from(index).ok().and_then(|i| series.get_mut(i)) {
            *paid = paid.checked_add(entry.amount)?;
        }
    }
    let mut subjects = by_subject
        .into_iter()
        .map(|(subject, paid)| {
            let total = paid.iter().try_fold(Amount::ZERO, |sum, p| sum.checked_add(*p))?;
            Ok(SubjectSeries { subject: subject.clone(), paid, total })
        })
        .collect::<Result<Vec<_>, AmountError>>()?;
    subjects.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.subject.cmp(&b.subject)));
    let days = (first..=last).map(day_string).collect();
    Ok(DailySpending { days, subjects })
}

/// What `subject` paid out since `since` (the start of its budget period).
pub fn spent_since<'a>(
    entries: impl IntoIterator<Item = &'a SpendingEntry>,
    subject: &Subject,
    since: Timestamp,
) -> Result<Amount, AmountError> {
    entries
        .into_iter()
        .filter(|e| e.direction == Direction::Out && &e.subject == subject && e.at >= since)
        .try_fold(Amount::ZERO, |sum, e| sum.checked_add(e.amount))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::time::Utc;

    fn units(n: u128) -> Amount {
        Amount::from_base_units(n)
    }

    fn day(d: u32) -> Timestamp {
        Timestamp::from_civil(2026, 11, d)
    }

    fn entry(at: Timestamp, direction: Direction, subject: &str, counterparty: &str, amount: u128) -> SpendingEntry {
        SpendingEntry {
            at,
            direction,
            subject: subject.parse().unwrap(),
            counterparty: counterparty.to_owned(),
            amount: units(amount),
            memo: String::new(),
            channel: None,
            approval: None,
        }
    }

    fn ledger() -> Vec<SpendingEntry> {
        vec![
            entry(day(1), Direction::Out, "device:fridge", "grocer", 100),
            entry(day(1).saturating_add_secs(3_600), Direction::Out, "device:fridge", "grocer", 50),
            entry(day(1).saturating_add_secs(7_200), Direction::In, "device:solar", "grid", 30),
            entry(day(2), Direction::Out, "plugin:weather", "forecaster", 7),
            entry(day(3), Direction::Out, "device:fridge", "forecaster", 1),
            entry(day(3), Direction::In, "device:fridge", "neighbour", 5),
        ]
    }

    fn row(key: &str, paid: u128, received: u128, payments: u64) -> ReportRow {
        ReportRow { key: key.to_owned(), paid: units(paid), received: units(received), payments }
    }

    #[test]
    fn reports_by_subject_split_paid_and_received() {
        let rows = report(&ledger(), GroupBy::Subject, None, None, &Utc).unwrap();
        assert_eq!(
            rows,
            vec![row("device:fridge", 151, 5, 4), row("device:solar", 0, 30, 1), row("plugin:weather", 7, 0, 1)]
        );
    }

    #[test]
    fn reports_by_payee() {
        let rows = report(&ledger(), GroupBy::Payee, None, None, &Utc).unwrap();
        assert_eq!(
            rows,
            vec![
                row("forecaster", 8, 0, 2),
                row("grid", 0, 30, 1),
                row("grocer", 150, 0, 2),
                row("neighbour", 0, 5, 1)
            ]
        );
    }

    #[test]
    fn reports_by_day_of_the_homes_clock() {
        let rows = report(&ledger(), GroupBy::Day, None, None, &Utc).unwrap();
        assert_eq!(rows, vec![row("2026-11-01", 150, 30, 3), row("2026-11-02", 7, 0, 1), row("2026-11-03", 1, 5, 2)]);
        // Five hours behind UTC, the early-morning payments fall on the evening before.
        let rows = report(&ledger(), GroupBy::Day, None, None, &|_| -5 * 3600).unwrap();
        assert_eq!(rows, vec![row("2026-10-31", 150, 30, 3), row("2026-11-01", 7, 0, 1), row("2026-11-02", 1, 5, 2)]);
    }

    #[test]
    fn the_report_window_includes_from_and_excludes_to() {
        let rows = report(&ledger(), GroupBy::Day, Some(day(2)), Some(day(3)), &Utc).unwrap();
        assert_eq!(rows, vec![row("2026-11-02", 7, 0, 1)]);
        let from_only = report(&ledger(), GroupBy::Day, Some(day(2)), None, &Utc).unwrap();
        assert_eq!(from_only.len(), 2);
        let to_only = report(&ledger(), GroupBy::Day, None, Some(day(2)), &Utc).unwrap();
        assert_eq!(to_only, vec![row("2026-11-01", 150, 30, 3)]);
        assert_eq!(report(&ledger(), GroupBy::Day, Some(day(3)), Some(day(3)), &Utc).unwrap(), vec![]);
        assert_eq!(report(&[], GroupBy::Subject, None, None, &Utc).unwrap(), vec![]);
    }

    #[test]
    fn a_report_that_overflows_says_so() {
        let entries = vec![
            entry(day(1), Direction::Out, "device:fridge", "grocer", u128::MAX),
            entry(day(1), Direction::Out, "device:fridge", "grocer", 1),
        ];
        assert_eq!(report(&entries, GroupBy::Subject, None, None, &Utc), Err(AmountError::Overflow));
    }

    #[test]
    fn daily_series_cover_every_day_of_the_period_per_subject_biggest_first() {
        let daily = daily_paid(&ledger(), day(1), day(4), &Utc).unwrap();
        assert_eq!(daily.days, ["2026-11-01", "2026-11-02", "2026-11-03"]);
        let series: Vec<(String, Vec<u128>, u128)> = daily
            .subjects
            .iter()
            .map(|s| (s.subject.to_string(), s.paid.iter().map(|a| a.base_units()).collect(), s.total.base_units()))
            .collect();
        // Money in (solar's sale, the neighbour's payment) is not spending.
        assert_eq!(
            series,
            vec![("device:fridge".to_owned(), vec![150, 0, 1], 151), ("plugin:weather".to_owned(), vec![0, 7, 0], 7)]
        );
        assert_eq!(daily.day_totals().unwrap(), vec![units(150), units(7), units(1)]);

        // A window inside the ledger, on a clock an hour ahead: the first day's payments at
        // 00:00 and 01:00 UTC are 01:00 and 02:00 there.
        let ahead = daily_paid(&ledger(), day(1), day(2), &|_| 3600).unwrap();
        assert_eq!(ahead.days, ["2026-11-01", "2026-11-02"]);
        assert_eq!(ahead.subjects.len(), 1);
        assert_eq!(ahead.subjects[0].paid, vec![units(150), Amount::ZERO]);
    }

    #[test]
    fn daily_series_refuse_empty_and_overlong_periods() {
        assert_eq!(daily_paid(&ledger(), day(2), day(2), &Utc), Err(ReportError::EmptyPeriod));
        let year = Timestamp::from_civil(2026, 1, 1);
        assert_eq!(daily_paid(&[], year, Timestamp::from_civil(2027, 1, 1), &Utc).unwrap().days.len(), 365);
        assert_eq!(
            daily_paid(&[], year, Timestamp::from_civil(2027, 1, 3), &Utc),
            Err(ReportError::TooManyDays { days: 367 })
        );
        assert_eq!(
            daily_paid(&[], Timestamp(0), Timestamp(u64::MAX), &Utc),
            Err(ReportError::TooManyDays { days: i64::MAX as u64 / 86_400 + 1 })
        );
    }

    #[test]
    fn spent_since_counts_only_the_subjects_payments_out_from_then() {
        let entries = ledger();
        let fridge: Subject = "device:fridge".parse().unwrap();
        assert_eq!(spent_since(&entries, &fridge, day(1)), Ok(units(151)));
        assert_eq!(spent_since(&entries, &fridge, day(1).saturating_add_secs(1)), Ok(units(51)));
        assert_eq!(spent_since(&entries, &fridge, day(3)), Ok(units(1)));
        assert_eq!(spent_since(&entries, &fridge, day(4)), Ok(Amount::ZERO));
        let solar: Subject = "device:solar".parse().unwrap();
        assert_eq!(spent_since(&entries, &solar, day(1)), Ok(Amount::ZERO));
    }

    #[test]
    fn entries_round_trip_through_json_omitting_empty_links() {
        let mut e = entry(day(1), Direction::Out, "device:fridge", "grocer", 100);
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("channel") && !json.contains("approval"), "{json}");
        assert!(json.contains(r#""direction":"out""#), "{json}");
        assert_eq!(serde_json::from_str::<SpendingEntry>(&json).unwrap(), e);
        e.channel = Some(ChannelId::from_bytes([1; 32]));
        e.approval = Some(3);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<SpendingEntry>(&json).unwrap(), e);
    }
}
