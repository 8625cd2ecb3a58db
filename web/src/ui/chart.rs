//! The spending chart, drawn on the server as SVG: one bar per day, stacked by who paid. Pure
//! geometry from a [`DailySpending`]; the template only writes the shapes out.

use machinomy_core::{Amount, Currency, DailySpending};

use super::view::money;

/// The drawing's size in SVG units (it scales to the page's width).
pub(crate) const WIDTH: u32 = 760;
pub(crate) const HEIGHT: u32 = 260;
const LEFT: f64 = 92.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 28.0;
/// Gridlines above the baseline.
const STEPS: u32 = 4;
/// Subjects drawn in their own colour; the rest share one as "others".
const NAMED: usize = 7;
/// At most this many dates along the bottom.
const MAX_LABELS: usize = 10;

const PALETTE: [&str; NAMED] = ["#1f6feb", "#1a7f37", "#bf8700", "#cf222e", "#8250df", "#0f8b8d", "#bc4c00"];
const OTHERS_COLOUR: &str = "#8c959f";

/// One rectangle: a subject's spend on one day.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bar {
    pub(crate) x: String,
    pub(crate) y: String,
    pub(crate) width: String,
    pub(crate) height: String,
    pub(crate) fill: &'static str,
    /// The tooltip: who, which day, how much.
    pub(crate) title: String,
}

/// A horizontal gridline and its amount.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GridLine {
    pub(crate) y: String,
    pub(crate) label: String,
}

/// A date along the bottom.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DayLabel {
    pub(crate) x: String,
    pub(crate) text: String,
}

/// A colour and whom it stands for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LegendEntry {
    pub(crate) fill: &'static str,
    pub(crate) name: String,
    pub(crate) total: String,
}

/// Everything the template draws.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Chart {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) baseline: String,
    pub(crate) plot_left: String,
    pub(crate) plot_right: String,
    pub(crate) bars: Vec<Bar>,
    pub(crate) grid: Vec<GridLine>,
    pub(crate) days: Vec<DayLabel>,
    pub(crate) legend: Vec<LegendEntry>,
    /// A sentence for screen readers: the period and the biggest day.
    pub(crate) summary: String,
}

/// A coordinate, to a tenth of a unit.
fn at(value: f64) -> String {
    format!("{value:.1}")
}

/// The smallest of 1, 2, 5 × 10ⁿ base units whose [`STEPS`] gridlines reach `max`.
fn grid_step(max: u128) -> u128 {
    let mut scale: u128 = 1;
    loop {
        for digit in [1, 2, 5] {
            let step = scale.saturating_mul(digit);
            if step.saturating_mul(u128::from(STEPS)) >= max {
                return step;
            }
        }
        if scale > u128::MAX / 10 {
            return u128::MAX / u128::from(STEPS);
        }
        scale *= 10;
    }
}

/// The drawing of `daily`, amounts shown in `currency`.
pub(crate) fn draw(daily: &DailySpending, currency: &Currency) -> Chart {
    let days = daily.days.len().max(1);
    // Each day's total of the subjects drawn, kept as amounts: the scale is exact.
    let mut totals = vec![0u128; days];
    for series in &daily.subjects {
        for (total, paid) in totals.iter_mut().zip(&series.paid) {
            *total = total.saturating_add(paid.base_units());
        }
    }
    let max = totals.iter().copied().max().unwrap_or(0);
    let step = grid_step(max.max(1));
    let top = step.saturating_mul(u128::from(STEPS));
    let (plot_w, plot_h) = (f64::from(WIDTH) - LEFT - RIGHT, f64::from(HEIGHT) - TOP - BOTTOM);
    let baseline = TOP + plot_h;
    // Drawing only: the amounts themselves stay integers everywhere else.
    let height_of = |units: u128| units as f64 / top as f64 * plot_h;
    let slot = plot_w / days as f64;
    let bar_width = (slot * 0.8).max(1.0);

    let colour = |index: usize| PALETTE.get(index).copied().unwrap_or(OTHERS_COLOUR);
    let mut legend: Vec<LegendEntry> = Vec::new();
    let mut others = Amount::ZERO;
    for (index, series) in daily.subjects.iter().enumerate() {
        if index < NAMED {
            legend.push(LegendEntry {
                fill: colour(index),
                name: series.subject.to_string(),
                total: money(currency, series.total),
            });
        } else {
            others = others.checked_add(series.total).unwrap_or(others);
        }
    }
    let extra = daily.subjects.len().saturating_sub(NAMED);
    if extra > 0 {
        legend.push(LegendEntry {
            fill: OTHERS_COLOUR,
            name: format!("{extra} other{}", if extra == 1 { "" } else { "s" }),
            total: money(currency, others),
        });
    }

    let mut bars = Vec::new();
    let mut stacked = vec![0u128; days];
    for (index, series) in daily.subjects.iter().enumerate() {
        for (day, paid) in series.paid.iter().enumerate() {
            let units = paid.base_units();
            let (Some(below), Some(date)) = (stacked.get_mut(day), daily.days.get(day)) else { continue };
            if units == 0 {
                continue;
            }
            let bottom = baseline - height_of(*below);
            *below = below.saturating_add(units);
            let y = baseline - height_of(*below);
            let x = LEFT + slot * day as f64 + (slot - bar_width) / 2.0;
            let who = if index < NAMED { series.subject.to_string() } else { "others".to_owned() };
            bars.push(Bar {
                x: at(x),
                y: at(y),
                width: at(bar_width),
                // A payment of one base unit still shows as a sliver.
                height: at((bottom - y).max(0.5)),
                fill: colour(index.min(NAMED)),
                title: format!("{who} on {date}: {}", money(currency, *paid)),
            });
        }
    }

    // Nothing paid: only the zero line, not a scale of single base units.
    let grid_lines = if max == 0 { 0 } else { STEPS };
    let grid = (0..=grid_lines)
        .map(|i| GridLine {
            y: at(baseline - plot_h * f64::from(i) / f64::from(STEPS)),
            label: money(currency, Amount::from_base_units(step.saturating_mul(u128::from(i)))),
        })
        .collect();
    let every = days.div_ceil(MAX_LABELS);
    let labels = daily
        .days
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0)
        .map(|(i, date)| DayLabel {
            x: at(LEFT + slot * i as f64 + slot / 2.0),
            text: date.get(5..).unwrap_or(date).to_owned(),
        })
        .collect();
    let busiest = totals.iter().enumerate().max_by_key(|(_, t)| **t).and_then(|(i, _)| daily.days.get(i));
    let summary = match (daily.days.first(), daily.days.last(), busiest) {
        (Some(first), Some(last), Some(busiest)) if max > 0 => format!(
            "Spending per day from {first} to {last}; the most, {}, on {busiest}.",
            money(currency, Amount::from_base_units(max))
        ),
        _ => "Nothing was paid in this period.".to_owned(),
    };
    Chart {
        width: WIDTH,
        height: HEIGHT,
        baseline: at(baseline),
        plot_left: at(LEFT),
        plot_right: at(f64::from(WIDTH) - RIGHT),
        bars,
        grid,
        days: labels,
        legend,
        summary,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use machinomy_core::{Subject, SubjectSeries};

    use super::*;

    fn series(subject: &str, paid: &[u128]) -> SubjectSeries {
        let paid: Vec<Amount> = paid.iter().map(|p| Amount::from_base_units(*p)).collect();
        let total = paid.iter().fold(Amount::ZERO, |s, p| s.checked_add(*p).unwrap());
        SubjectSeries { subject: subject.parse::<Subject>().unwrap(), paid, total }
    }

    fn days(n: usize) -> Vec<String> {
        (1..=n).map(|d| format!("2026-11-{d:02}")).collect()
    }

    #[test]
    fn grid_steps_are_round_and_reach_the_biggest_day() {
        assert_eq!(grid_step(1), 1);
        assert_eq!(grid_step(4), 1);
        assert_eq!(grid_step(5), 2);
        assert_eq!(grid_step(9), 5);
        assert_eq!(grid_step(1_500_000_000), 500_000_000);
        assert_eq!(grid_step(2_000_000_001), 1_000_000_000);
        assert!(grid_step(u128::MAX).saturating_mul(4) >= u128::MAX / 2);
    }

    #[test]
    fn bars_stack_per_day_and_the_tallest_day_fits_the_plot() {
        let daily = DailySpending {
            days: days(3),
            subjects: vec![
                series("device:fridge", &[3_000_000_000, 0, 1_000_000_000]),
                series("plugin:weather", &[1_000_000_000, 0, 0]),
            ],
        };
        let chart = draw(&daily, &Currency::usd());
        assert_eq!(chart.bars.len(), 3, "no bar for a day with nothing");
        let (fridge, weather) = (&chart.bars[0], &chart.bars[2]);
        assert_eq!(fridge.title, "device:fridge on 2026-11-01: 3.00 USD");
        assert_eq!(weather.title, "plugin:weather on 2026-11-01: 1.00 USD");
        // Stacked: the weather bar sits on the fridge's, and together they reach the top gridline.
        assert_eq!(
            weather.y.parse::<f64>().unwrap() + weather.height.parse::<f64>().unwrap(),
            fridge.y.parse::<f64>().unwrap()
        );
        assert_eq!(weather.y, chart.grid[4].y);
        assert_eq!(chart.grid[4].label, "4.00 USD");
        assert_eq!(chart.grid[0].label, "0.00 USD");
        assert_eq!(chart.legend[0].name, "device:fridge");
        assert_eq!(chart.legend[0].total, "4.00 USD");
        assert_ne!(chart.legend[0].fill, chart.legend[1].fill);
        assert!(chart.summary.contains("the most, 4.00 USD, on 2026-11-01"), "{}", chart.summary);
        assert_eq!(chart.days.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(), ["11-01", "11-02", "11-03"]);
    }

    #[test]
    fn subjects_beyond_the_palette_share_one_colour_and_a_legend_line() {
        let subjects: Vec<SubjectSeries> = (0..10u128).map(|i| series(&format!("device:d{i}"), &[100 - i])).collect();
        let chart = draw(&DailySpending { days: days(1), subjects }, &Currency::usd());
        assert_eq!(chart.legend.len(), NAMED + 1);
        let others = chart.legend.last().unwrap();
        assert_eq!((others.name.as_str(), others.fill), ("3 others", OTHERS_COLOUR));
        assert_eq!(others.total, money(&Currency::usd(), Amount::from_base_units(93 + 92 + 91)));
        assert!(chart.bars.iter().skip(NAMED).all(|b| b.fill == OTHERS_COLOUR && b.title.starts_with("others")));
    }

    #[test]
    fn an_empty_period_draws_no_bars_and_says_so() {
        let chart = draw(&DailySpending { days: days(30), subjects: Vec::new() }, &Currency::usd());
        assert!(chart.bars.is_empty());
        assert_eq!(chart.summary, "Nothing was paid in this period.");
        assert_eq!(chart.grid.len(), 1, "only the zero line");
        assert_eq!(chart.grid[0].label, "0.00 USD");
        assert!(chart.days.len() <= MAX_LABELS, "{} labels", chart.days.len());
        let one_unit =
            draw(&DailySpending { days: days(1), subjects: vec![series("device:fridge", &[1])] }, &Currency::usd());
        assert_eq!(one_unit.bars.len(), 1);
    }
}
