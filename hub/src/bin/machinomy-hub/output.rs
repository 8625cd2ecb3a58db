//! What the CLI prints: short aligned text for people, or JSON with `--json`.
#![allow(clippy::print_stdout)] // printing is this module's job

use std::fmt::Write;

use anyhow::Result;
use machinomy_core::{Approval, ApprovalState, Currency, Timestamp};
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

pub(crate) fn init(config: &Config, data_dir: &DataDir, created_config: bool, created_data: bool) {
    let verb = |created| if created { "created" } else { "exists " };
    println!("config    {} {}", verb(created_config), config.path.display());
    println!("data dir  {} {}", verb(created_data), data_dir.root().display());
    println!("identity  {}", data_dir.public_key());
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
        status.name,
        status.version,
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
    format!(
        "channel       {}\nrole          {}\nledger        {}\ncounterparty  {}\nstatus        {}\ncapacity      {}\nspent         {}\nremaining     {}\nopened        {}\nsettlement    {}\n",
        c.id,
        format!("{:?}", c.role).to_lowercase(),
        c.ledger,
        c.counterparty,
        c.status.name(),
        c.currency.format(c.capacity),
        c.currency.format(c.spent),
        c.currency.format(c.remaining),
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
            b.budget.subject.to_string(),
            b.budget.period.to_string(),
            b.currency.format(b.spent_this_period),
            b.currency.format(b.budget.limit),
            b.currency.format(b.budget.auto_approve)
        );
    }
    out
}

pub(crate) fn approvals(approvals: &[Approval], currency: &Currency) -> String {
    if approvals.is_empty() {
        return "no spend requests waiting\n".to_owned();
    }
    let mut out = String::new();
    for a in approvals {
        let state = match &a.state {
            ApprovalState::Pending => format!("pending, expires {}", when(a.expires_at)),
            ApprovalState::Approved { by, at } => format!("approved by {by} at {}", when(*at)),
            ApprovalState::Denied { by, at, reason } => format!("denied by {by} at {}: {reason}", when(*at)),
            ApprovalState::Expired { at } => format!("expired at {}", when(*at)),
        };
        let _ = writeln!(
            out,
            "#{:<6} {} pays {} {} for {:?} ({state})",
            a.id,
            a.request.subject,
            a.request.payee,
            currency.format(a.request.amount),
            a.request.memo
        );
    }
    out
}

pub(crate) fn spending(report: &SpendingReport) -> String {
    let mut out = format!("{:<40}  {:>16}  {:>16}  {:>8}\n", "KEY", "PAID", "RECEIVED", "PAYMENTS");
    for row in &report.rows {
        let _ = writeln!(
            out,
            "{:<40}  {:>16}  {:>16}  {:>8}",
            row.key,
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
