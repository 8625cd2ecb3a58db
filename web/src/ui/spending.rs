//! Where the money went: the report for a chosen period by who paid, by payee or by day, the
//! daily chart stacked by who paid, and the same report as CSV.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use machinomy_core::spending::MAX_SERIES_DAYS;
use machinomy_core::{GroupBy, Subject, Timestamp};
use serde::Deserialize;

use crate::backend::Backend;
use crate::model::SpendingQuery;

use super::chart::{self, Chart};
use super::view::{Layout, from_jiff, money, short, to_jiff};
use super::{Frame, Owner, PageError, Ui, invalid, render};

/// The query as typed; every field may be missing or wrong.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SpendingParams {
    #[serde(default)]
    from: String,
    #[serde(default)]
    through: String,
    #[serde(default)]
    by: String,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub(crate) struct ReportLine {
    /// `device`, `plugin`, `peer` when grouped by who paid; empty otherwise.
    pub(crate) kind: &'static str,
    pub(crate) key: String,
    pub(crate) paid: String,
    pub(crate) received: String,
    pub(crate) payments: u64,
}

/// A link to a ready-made period.
#[derive(Clone, Debug)]
pub(crate) struct Preset {
    pub(crate) label: &'static str,
    pub(crate) href: String,
}

/// The report of a valid query.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) heading: &'static str,
    pub(crate) lines: Vec<ReportLine>,
    pub(crate) total_paid: String,
    pub(crate) total_received: String,
    pub(crate) chart: Chart,
    pub(crate) csv_href: String,
}

#[derive(Template, Debug)]
#[template(path = "spending.html")]
pub(crate) struct SpendingPage {
    pub(crate) layout: Layout,
    pub(crate) from: String,
    pub(crate) through: String,
    pub(crate) by: &'static str,
    pub(crate) from_error: Option<String>,
    pub(crate) through_error: Option<String>,
    pub(crate) by_error: Option<String>,
    pub(crate) presets: Vec<Preset>,
    pub(crate) report: Option<Report>,
}

/// The groupings the page offers: (value, label).
pub(crate) const GROUPINGS: [(&str, &str); 3] =
    [("subject", "Who paid (devices, plugins)"), ("payee", "Whom it paid"), ("day", "Day")];

impl SpendingPage {
    pub(crate) fn groupings(&self) -> &'static [(&'static str, &'static str)] {
        &GROUPINGS
    }
}

/// A date typed in a form: `YYYY-MM-DD`.
fn parse_date(text: &str) -> Option<Date> {
    crate::api::parse_date(text.trim())
}

/// Midnight at the start of `date` in `zone` (the first instant of a day that skips midnight).
fn midnight(date: Date, zone: &TimeZone) -> Option<Timestamp> {
    date.to_zoned_datetime(zone.clone()).ok().map(|z| from_jiff(z.timestamp()))
}

fn href(from: Date, through: Date, by: &str) -> String {
    format!("/spending?from={from}&through={through}&by={by}")
}

/// This month, last month, the last 7 and 30 days, this year: as of `today`.
fn presets(today: Date, by: &str) -> Vec<Preset> {
    let first_of_month = today.first_of_month();
    let last_month_end = first_of_month.yesterday().unwrap_or(first_of_month);
    let back = |days: i64| today.checked_sub(jiff::Span::new().days(days)).unwrap_or(today);
    vec![
        Preset { label: "This month", href: href(first_of_month, today.last_of_month(), by) },
        Preset { label: "Last month", href: href(last_month_end.first_of_month(), last_month_end, by) },
        Preset { label: "Last 7 days", href: href(back(6), today, by) },
        Preset { label: "Last 30 days", href: href(back(29), today, by) },
        Preset { label: "This year", href: href(today.first_of_year(), today.last_of_year(), by) },
    ]
}

pub(crate) async fn page<B: Backend>(
    State(ui): State<Ui<B>>,
    Owner(owner): Owner,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    // Whatever cannot be read is shown as missing, each field then judged on its own.
    let params: SpendingParams = query.and_then(|q| serde_urlencoded::from_str(&q).ok()).unwrap_or_default();
    let frame = Frame::load(&ui).await?;
    let zone = frame.zone.clone();
    let today = to_jiff(frame.status.now).to_zoned_datetime(zone.clone()).date();
    let (group_by, by, by_error) = match params.by.as_str() {
        "" | "subject" => (GroupBy::Subject, "subject", None),
        "payee" => (GroupBy::Payee, "payee", None),
        "day" => (GroupBy::Day, "day", None),
        _ => (GroupBy::Subject, "subject", Some("Choose one of the groupings listed.".to_owned())),
    };
    let (mut from_error, mut through_error) = (None, None);
    let from = if params.from.trim().is_empty() {
        Some(today.first_of_month())
    } else {
        parse_date(&params.from).or_else(|| {
            from_error = Some("A date, as YYYY-MM-DD.".to_owned());
            None
        })
    };
    let through = if params.through.trim().is_empty() {
        Some(today.last_of_month())
    } else {
        parse_date(&params.through).or_else(|| {
            through_error = Some("A date, as YYYY-MM-DD.".to_owned());
            None
        })
    };
    let (from_text, through_text) = (
        from.map_or_else(|| params.from.clone(), |d| d.to_string()),
        through.map_or_else(|| params.through.clone(), |d| d.to_string()),
    );
    let mut period = None;
    if let (Some(from), Some(through)) = (from, through) {
        let days = from.until((jiff::Unit::Day, through)).map_or(i64::MAX, |span| i64::from(span.get_days()));
        if through < from {
            through_error = Some("The last day must not be before the first.".to_owned());
        } else if days >= MAX_SERIES_DAYS as i64 {
            through_error = Some(format!("A report covers at most {MAX_SERIES_DAYS} days."));
        } else if let (Some(start), Some(end)) =
            (midnight(from, &zone), through.tomorrow().ok().and_then(|next| midnight(next, &zone)))
        {
            period = Some((start, end, from, through.tomorrow().unwrap_or(through)));
        } else {
            through_error = Some("That period is outside the calendar this hub can show.".to_owned());
        }
    }

    let report = match (period, &by_error) {
        (Some((start, end, first_day, next_day)), None) => {
            let query = SpendingQuery { group_by, from: Some(start), to: Some(end) };
            let (report, daily) = tokio::join!(ui.backend.spending(query), ui.backend.daily_spending(start, end));
            let (report, daily) = (report?, daily?);
            let currency = &report.currency;
            let lines = report
                .rows
                .iter()
                .map(|row| {
                    let (kind, key) = match (group_by, row.key.parse::<Subject>()) {
                        (GroupBy::Subject, Ok(subject)) => (subject.kind(), subject.name().to_owned()),
                        _ => ("", short(&row.key)),
                    };
                    ReportLine {
                        kind,
                        key,
                        paid: money(currency, row.paid),
                        received: money(currency, row.received),
                        payments: row.payments,
                    }
                })
                .collect();
            Some(Report {
                heading: GROUPINGS.iter().find(|(v, _)| *v == by).map_or("", |(_, label)| label),
                lines,
                total_paid: money(currency, report.total_paid),
                total_received: money(currency, report.total_received),
                chart: chart::draw(&daily.daily, &daily.currency),
                csv_href: format!("/api/v1/spending.csv?group_by={by}&from={first_day}&to={next_day}"),
            })
        }
        _ => None,
    };
    let page = SpendingPage {
        layout: frame.layout(&ui.sessions, &owner, "Spending", "spending", "payment"),
        from: from_text,
        through: through_text,
        by,
        from_error,
        through_error,
        by_error,
        presets: presets(today, by),
        report,
    };
    if page.report.is_none() { Ok(invalid(&page)) } else { Ok(render(&page)) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_whole_iso_days() {
        assert_eq!(parse_date("2026-11-03"), Some(jiff::civil::date(2026, 11, 3)));
        assert_eq!(parse_date(" 2026-11-03 "), Some(jiff::civil::date(2026, 11, 3)));
        for bad in ["", "2026-11-3", "2026-02-30", "03.11.2026", "2026-11-03T00:00", "<b>"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn midnight_is_the_homes_midnight() {
        let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let date = jiff::civil::date(2026, 11, 24);
        assert_eq!(midnight(date, &TimeZone::UTC), Some(Timestamp::from_civil(2026, 11, 24)));
        assert_eq!(midnight(date, &berlin), Some(Timestamp(Timestamp::from_civil(2026, 11, 24).secs() - 3600)));
    }

    #[test]
    fn presets_cover_whole_months_and_the_last_days() {
        let links: Vec<String> = presets(jiff::civil::date(2026, 3, 10), "day").into_iter().map(|p| p.href).collect();
        assert_eq!(
            links,
            [
                "/spending?from=2026-03-01&through=2026-03-31&by=day",
                "/spending?from=2026-02-01&through=2026-02-28&by=day",
                "/spending?from=2026-03-04&through=2026-03-10&by=day",
                "/spending?from=2026-02-09&through=2026-03-10&by=day",
                "/spending?from=2026-01-01&through=2026-12-31&by=day",
            ]
        );
    }
}
