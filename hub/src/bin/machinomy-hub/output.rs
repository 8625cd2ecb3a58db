//! What the CLI prints: short aligned text for people, or JSON with `--json`.
#![allow(clippy::print_stdout)] // printing is this module's job

use std::fmt::Write;

use anyhow::Result;
use machinomy_core::{Approval, ApprovalState, ChannelStatus, Currency, PublicKey, SpendOutcome, Timestamp};
use machinomy_hub::Config;
use machinomy_hub::datadir::DataDir;
use machinomy_web::model::{BudgetView, ChannelView, HubStatus, SpendingReport};
use serde::Serialize;

pub(crate) fn print(text: &str) {
    print!("{text}");
}

pub(crate) fn show<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print(&text());
    }
    Ok(())
}

/// What `init` made, for `--json`.
#[derive(Serialize)]
struct InitReport {
    config: String,
    data_dir: String,
    identity: PublicKey,
    created_config: bool,
    created_data: bool,
}

pub(crate) fn init(
    json: bool,
    config: &Config,
    data_dir: &DataDir,
    created_config: bool,
    created_data: bool,
) -> Result<()> {
    let report = InitReport {
        config: config.path.display().to_string(),
        data_dir: data_dir.root().display().to_string(),
        identity: data_dir.public_key(),
        created_config,
        created_data,
    };
    show(json, &report, || {
        let verb = |created| if created { "created" } else { "exists " };
        format!(
            "config    {} {}\ndata dir  {} {}\nidentity  {}\n",
            verb(created_config),
            clean(&report.config),
            verb(created_data),
            clean(&report.data_dir),
            report.identity
        )
    })
}

/// Text that came from a device, a peer or the network, made safe to print on a terminal:
/// control characters (newline, ESC, C1 controls …) and bidirectional overrides are shown
/// escaped (`\n`, `\u{1b}`) instead of being obeyed.
pub(crate) fn clean(text: &str) -> String {
    escape(text, |_| false)
}

/// [`clean`] for CSV, whose line ends (and any quoted newline) are its own.
fn clean_csv(text: &str) -> String {
    escape(text, |c| matches!(c, '\r' | '\n' | '\t'))
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() || is_bidi_control(c)) && !keep(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that reorder what follows them on screen (so printed text can lie about itself).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `"text"`, quoted and [`clean`].
pub(crate) fn quoted(text: &str) -> String {
    clean(&format!("{text:?}"))
}

/// A CSV report as it came from the hub, with [`clean_csv`] applied.
pub(crate) fn csv(text: &str) -> String {
    clean_csv(text)
}

fn when(t: Timestamp) -> String {
    let secs = t.secs() % 86_400;
    format!("{} {:02}:{:02} UTC", t.date_string(), secs / 3600, secs % 3600 / 60)
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub(crate) fn status(status: &HubStatus, api: &str) -> String {
    format!(
        "hub        {} (v{})\nidentity   {}\napi        {api}\nup         {}\ncurrency   {} ({} decimals)\nchannels   {} open\napprovals  {} pending\nbudgets    {}\n",
        clean(&status.name),
        clean(&status.version),
        status.public_key,
        duration(status.uptime_secs),
        status.currency.code(),
        status.currency.decimals(),
        status.channels_open,
        status.approvals_pending,
        status.budgets,
    )
}

pub(crate) fn channels(channels: &[ChannelView]) -> String {
    if channels.is_empty() {
        return "no channels\n".to_owned();
    }
    let mut out = format!("{:<64}  {:<8}  {:<8}  {:>16}  {:>16}\n", "ID", "ROLE", "STATUS", "SPENT", "CAPACITY");
    for c in channels {
        let _ = writeln!(
            out,
            "{:<64}  {:<8}  {:<8}  {:>16}  {:>16}",
            c.id,
            format!("{:?}", c.role).to_lowercase(),
            c.status.name(),
            c.currency.format(c.spent),
            c.currency.format(c.capacity)
        );
    }
    out
}

pub(crate) fn channel(c: &ChannelView) -> String {
    let money = |amount| c.currency.format(amount);
    let status = match c.status {
        ChannelStatus::Open => "open".to_owned(),
        ChannelStatus::Closing { since, settle_after, final_amount } => {
            format!("closing since {}; settles {} after {}", when(since), money(final_amount), when(settle_after))
        }
        ChannelStatus::Settled { at, amount } => format!("settled {} at {}", money(amount), when(at)),
    };
    format!(
        "channel       {}\nrole          {}\nledger        {}\ncounterparty  {}\nstatus        {}\ncapacity      {}\nspent         {}\nremaining     {}\nopened        {}\nsettlement    {}\n",
        c.id,
        format!("{:?}", c.role).to_lowercase(),
        clean(&c.ledger.to_string()),
        clean(&c.counterparty.to_string()),
        status,
        money(c.capacity),
        money(c.spent),
        money(c.remaining),
        when(c.opened_at),
        duration(c.settlement_period_secs),
    )
}

pub(crate) fn budgets(budgets: &[BudgetView]) -> String {
    if budgets.is_empty() {
        return "no budgets\n".to_owned();
    }
    let mut out =
        format!("{:<32}  {:<6}  {:>16}  {:>16}  {:>16}\n", "SUBJECT", "PERIOD", "SPENT", "LIMIT", "AUTO-APPROVE");
    for b in budgets {
        let _ = writeln!(
            out,
            "{:<32}  {:<6}  {:>16}  {:>16}  {:>16}",
            clean(&b.budget.subject.to_string()),
            b.budget.period.to_string(),
            b.currency.format(b.spent_this_period),
            b.currency.format(b.budget.limit),
            b.currency.format(b.budget.auto_approve)
        );
    }
    out
}

fn approval_state(a: &Approval) -> String {
    match &a.state {
        ApprovalState::Pending => format!("pending, expires {}", when(a.expires_at)),
        ApprovalState::Approved { by, at } => format!("approved by {} at {}", clean(by), when(*at)),
        ApprovalState::Denied { by, at, reason } if reason.is_empty() => {
            format!("denied by {} at {}", clean(by), when(*at))
        }
        ApprovalState::Denied { by, at, reason } => {
            format!("denied by {} at {}: {}", clean(by), when(*at), clean(reason))
        }
        ApprovalState::Expired { at } => format!("expired at {}", when(*at)),
    }
}

/// Spend requests, one a line. `all` tells whether these are every request or only the
/// pending ones (for what to say when there are none).
pub(crate) fn approvals(approvals: &[Approval], currency: &Currency, all: bool) -> String {
    if approvals.is_empty() {
        let none = if all { "no spend requests yet\n" } else { "no spend requests waiting\n" };
        return none.to_owned();
    }
    let mut out =
        format!("{:<8}  {:<24}  {:<24}  {:>16}  {:<24}  {}\n", "ID", "SUBJECT", "PAYEE", "AMOUNT", "MEMO", "STATE");
    for a in approvals {
        let _ = writeln!(
            out,
            "{:<8}  {:<24}  {:<24}  {:>16}  {:<24}  {}",
            a.id,
            clean(&a.request.subject.to_string()),
            clean(&a.request.payee),
            currency.format(a.request.amount),
            quoted(&a.request.memo),
            approval_state(a)
        );
    }
    out
}

/// One spend request in full.
pub(crate) fn approval(a: &Approval, currency: &Currency) -> String {
    let mut out = format!(
        "approval   {}\nstate      {}\nsubject    {}\npayee      {}\namount     {}\nmemo       {}\nreference  {}\nrequested  {}\n",
        a.id,
        approval_state(a),
        clean(&a.request.subject.to_string()),
        clean(&a.request.payee),
        currency.format(a.request.amount),
        quoted(&a.request.memo),
        quoted(&a.request.reference),
        when(a.request.created_at),
    );
    match &a.outcome {
        None => {}
        Some(SpendOutcome::Paid { at, channel: Some(channel) }) => {
            let _ = writeln!(out, "outcome    paid at {} on channel {channel}", when(*at));
        }
        Some(SpendOutcome::Paid { at, channel: None }) => {
            let _ = writeln!(out, "outcome    paid at {}", when(*at));
        }
        Some(SpendOutcome::Failed { at, reason }) => {
            let _ = writeln!(out, "outcome    failed at {}: {}", when(*at), clean(reason));
        }
    }
    out
}

pub(crate) fn spending(report: &SpendingReport) -> String {
    let mut out = format!("{:<40}  {:>16}  {:>16}  {:>8}\n", "KEY", "PAID", "RECEIVED", "PAYMENTS");
    for row in &report.rows {
        let _ = writeln!(
            out,
            "{:<40}  {:>16}  {:>16}  {:>8}",
            clean(&row.key),
            report.currency.format(row.paid),
            report.currency.format(row.received),
            row.payments
        );
    }
    let _ = writeln!(
        out,
        "{:<40}  {:>16}  {:>16}",
        "TOTAL",
        report.currency.format(report.total_paid),
        report.currency.format(report.total_received)
    );
    out
}

pub(crate) fn peers(peers: &[machinomy_web::model::PeerView]) -> String {
    if peers.is_empty() {
        return "no peers known (is the peer network enabled, with bootstrap peers or mDNS?)\n".to_owned();
    }
    let mut out = format!("{:<64}  {:<9}  {}\n", "KEY", "STATE", "ADDRESSES");
    for p in peers {
        let state = if p.connected { "connected" } else { "known" };
        let _ = writeln!(out, "{:<64}  {state:<9}  {}", p.key, clean(&p.addrs.join(" ")));
    }
    out
}

/// Offers are in the hub's own currency: the hub refuses offers priced in any other.
pub(crate) fn services(services: &machinomy_web::model::ServicesView, currency: &Currency) -> String {
    let mut out = String::new();
    for (title, offers) in [("SOLD HERE", &services.own), ("OFFERED BY OTHER HUBS", &services.seen)] {
        let _ = writeln!(out, "{title}");
        if offers.is_empty() {
            out.push_str("  none\n");
        }
        for o in offers {
            let _ = writeln!(
                out,
                "  {:<24} {:>18}  from {}  until {}  {}",
                clean(&o.service),
                currency.format(o.price),
                o.seller,
                when(o.expires_at),
                clean(&o.description)
            );
        }
    }
    out
}

pub(crate) fn call(result: &machinomy_web::model::CallResult) -> String {
    format!(
        "{}\n(paid {} to {} on channel {})\n",
        clean(&result.body),
        result.currency.format(result.price),
        result.seller,
        result.receipt.channel
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_shown_not_obeyed() {
        assert_eq!(clean("shop\u{1b}[2J\nnext\u{7}\u{9b}\u{202e}"), "shop\\u{1b}[2J\\nnext\\u{7}\\u{9b}\\u{202e}");
        assert_eq!(clean("plain café: 1.5 USD"), "plain café: 1.5 USD");
        assert_eq!(quoted("a\"b\u{1b}"), "\"a\\\"b\\u{1b}\"");
        assert_eq!(csv("key,paid\r\n\"a\u{1b}b\",1\r\n"), "key,paid\r\n\"a\\u{1b}b\",1\r\n");
    }
}
