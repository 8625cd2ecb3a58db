//! The spending report as CSV (RFC 4180) for spreadsheets.
//!
//! Columns: `key,paid,received,payments,currency`. `paid` and `received` are decimals in currency
//! units (`1.5`, not base units) so a spreadsheet can sum them; `currency` is the code they are in.
//! Keys come from devices, plugins and peers, so every text field is quoted where it must be and
//! defused where a spreadsheet would run it as a formula.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::model::SpendingReport;

pub(crate) const HEADER: &str = "key,paid,received,payments,currency";

pub(crate) fn spending_csv(report: &SpendingReport) -> String {
    let decimals = report.currency.decimals();
    let code = field(report.currency.code());
    let mut out = String::with_capacity(64 * (report.rows.len() + 1));
    out.push_str(HEADER);
    out.push_str("\r\n");
    for row in &report.rows {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{},{},{},{},{}\r\n",
            field(&row.key),
            row.paid.format_decimal(decimals),
            row.received.format_decimal(decimals),
            row.payments,
            code
        );
    }
    out
}

/// One CSV field: a leading formula character gets a `'` in front (OWASP's advice against CSV
/// injection), and a field holding a comma, quote or line break is quoted with quotes doubled.
pub(crate) fn field(text: &str) -> Cow<'_, str> {
    let defused: Cow<'_, str> = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    };
    if defused.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", defused.replace('"', "\"\"")))
    } else {
        defused
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        let cases = [
            ("device:fridge", "device:fridge"),
            ("", ""),
            ("Acme, Inc.", "\"Acme, Inc.\""),
            ("say \"cheese\"", "\"say \"\"cheese\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("cr\rhere", "\"cr\rhere\""),
        ];
        for (input, expected) in cases {
            assert_eq!(field(input), expected, "field({input:?})");
        }
    }

    #[test]
    fn formula_starts_are_defused() {
        let cases = [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("=HYPERLINK(\"http://x\",\"y\")", "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""),
            ("a=b", "a=b"),
        ];
        for (input, expected) in cases {
            assert_eq!(field(input), expected, "field({input:?})");
        }
    }
}
