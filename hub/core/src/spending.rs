//! The spending ledger: every payment made or received, and the reports read from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountError};
use crate::budget::Subject;
use crate::ids::ChannelId;
use crate::time::Timestamp;

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
    /// The subject (`device:fridge`), the counterparty, or the day (`YYYY-MM-DD`, UTC).
    pub key: String,
    pub paid: Amount,
    pub received: Amount,
    pub payments: u64,
}

/// Totals of the entries in `[from, to)` grouped by `group`, ordered by key.
pub fn report<'a>(
    entries: impl IntoIterator<Item = &'a SpendingEntry>,
    group: GroupBy,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Vec<ReportRow>, AmountError> {
    let mut rows: BTreeMap<String, ReportRow> = BTreeMap::new();
    for entry in entries {
        if from.is_some_and(|from| entry.at < from) || to.is_some_and(|to| entry.at >= to) {
            continue;
        }
        let key = match group {
            GroupBy::Subject => entry.subject.to_string(),
            GroupBy::Payee => entry.counterparty.clone(),
            GroupBy::Day => entry.at.date_string(),
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
        let rows = report(&ledger(), GroupBy::Subject, None, None).unwrap();
        assert_eq!(
            rows,
            vec![row("device:fridge", 151, 5, 4), row("device:solar", 0, 30, 1), row("plugin:weather", 7, 0, 1)]
        );
    }

    #[test]
    fn reports_by_payee() {
        let rows = report(&ledger(), GroupBy::Payee, None, None).unwrap();
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
    fn reports_by_utc_day() {
        let rows = report(&ledger(), GroupBy::Day, None, None).unwrap();
        assert_eq!(rows, vec![row("2026-11-01", 150, 30, 3), row("2026-11-02", 7, 0, 1), row("2026-11-03", 1, 5, 2)]);
    }

    #[test]
    fn the_report_window_includes_from_and_excludes_to() {
        let rows = report(&ledger(), GroupBy::Day, Some(day(2)), Some(day(3))).unwrap();
        assert_eq!(rows, vec![row("2026-11-02", 7, 0, 1)]);
        let from_only = report(&ledger(), GroupBy::Day, Some(day(2)), None).unwrap();
        assert_eq!(from_only.len(), 2);
        let to_only = report(&ledger(), GroupBy::Day, None, Some(day(2))).unwrap();
        assert_eq!(to_only, vec![row("2026-11-01", 150, 30, 3)]);
        assert_eq!(report(&ledger(), GroupBy::Day, Some(day(3)), Some(day(3))).unwrap(), vec![]);
        assert_eq!(report(&[], GroupBy::Subject, None, None).unwrap(), vec![]);
    }

    #[test]
    fn a_report_that_overflows_says_so() {
        let entries = vec![
            entry(day(1), Direction::Out, "device:fridge", "grocer", u128::MAX),
            entry(day(1), Direction::Out, "device:fridge", "grocer", 1),
        ];
        assert_eq!(report(&entries, GroupBy::Subject, None, None), Err(AmountError::Overflow));
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
