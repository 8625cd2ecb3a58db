//! Time as the core sees it: a number passed in by the caller. The core never reads a clock.

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

pub const SECONDS_PER_DAY: u64 = 86_400;

impl Timestamp {
    pub const fn secs(self) -> u64 {
        self.0
    }

    pub const fn saturating_add_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs))
    }

    /// Days since the epoch.
    pub const fn day_number(self) -> u64 {
        self.0 / SECONDS_PER_DAY
    }

    /// The (year, month 1-12, day 1-31) of this instant in UTC.
    pub fn civil_date(self) -> (i64, u32, u32) {
        civil_from_days(self.day_number() as i64)
    }

    /// `YYYY-MM-DD` in UTC.
    pub fn date_string(self) -> String {
        let (y, m, d) = self.civil_date();
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// Days since the epoch on a clock `zone` (the home's calendar): its local midnights
    /// divide the days.
    pub fn local_day_number(self, zone: &dyn UtcOffset) -> i64 {
        self.local_secs(zone).div_euclid(SECONDS_PER_DAY as i64)
    }

    /// `YYYY-MM-DD` on the clock `zone`.
    pub fn local_date_string(self, zone: &dyn UtcOffset) -> String {
        day_string(self.local_day_number(zone))
    }

    /// Seconds since the epoch as the clock `zone` reads them.
    fn local_secs(self, zone: &dyn UtcOffset) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX).saturating_add(i64::from(zone.offset_secs(self)))
    }

    /// Midnight UTC of the given civil date (year, month 1-12, day 1-31).
    pub fn from_civil(year: i64, month: u32, day: u32) -> Timestamp {
        let days = days_from_civil(year, month, day).max(0) as u64;
        // Saturates: the month after the last representable instant is still "the end of time".
        Timestamp(days.saturating_mul(SECONDS_PER_DAY))
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
pub fn day_string(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The instant the clock `zone` reads midnight at the start of `day` (days since the epoch),
/// clamped to the epoch. Where the clock skips midnight, an instant next to the jump.
pub fn local_midnight(day: i64, zone: &dyn UtcOffset) -> Timestamp {
    let local = day.saturating_mul(SECONDS_PER_DAY as i64);
    let at = |secs: i64| Timestamp(u64::try_from(secs).unwrap_or(0));
    // The offset at midnight is not known before midnight is: guess it from the offset at the
    // same reading taken as UTC, then correct once (offsets change at most twice a year, by hours).
    let guess = local.saturating_sub(i64::from(zone.offset_secs(at(local))));
    at(local.saturating_sub(i64::from(zone.offset_secs(at(guess)))))
}

/// A home's clock: how far it runs ahead of UTC at an instant, in seconds (negative: behind).
/// The hub passes its time zone's rules in; the core reads no zone database.
pub trait UtcOffset {
    fn offset_secs(&self, at: Timestamp) -> i32;
}

/// UTC itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utc;

impl UtcOffset for Utc {
    fn offset_secs(&self, _at: Timestamp) -> i32 {
        0
    }
}

/// A fixed offset, or any rule given as a function.
impl<F: Fn(Timestamp) -> i32> UtcOffset for F {
    fn offset_secs(&self, at: Timestamp) -> i32 {
        self(at)
    }
}

// Howard Hinnant's days-from-civil and its inverse (public domain algorithms); proleptic
// Gregorian calendar, exact for every date a hub will see.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip_over_four_centuries() {
        for days in (0..146_097 * 2).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn local_days_follow_the_clock_of_the_home() {
        let evening = Timestamp::from_civil(2026, 11, 24).saturating_add_secs(23 * 3600);
        assert_eq!(evening.local_date_string(&Utc), "2026-11-24");
        // One hour ahead (Berlin in winter): already the next day.
        assert_eq!(evening.local_date_string(&|_| 3600), "2026-11-25");
        // Five hours behind (New York in winter): still the same day; the epoch's first hours
        // are the last day of 1969 there.
        assert_eq!(evening.local_date_string(&|_| -5 * 3600), "2026-11-24");
        assert_eq!(Timestamp(3600).local_date_string(&|_| -5 * 3600), "1969-12-31");
        assert_eq!(Timestamp(u64::MAX).local_day_number(&|_| 3600), i64::MAX / 86_400);
    }

    #[test]
    fn known_dates() {
        assert_eq!(Timestamp(0).date_string(), "1970-01-01");
        assert_eq!(Timestamp(951_782_400).date_string(), "2000-02-29");
        assert_eq!(Timestamp::from_civil(2026, 11, 24).date_string(), "2026-11-24");
    }
}
