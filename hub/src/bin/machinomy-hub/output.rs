//! What the CLI prints: short aligned text for people, or JSON with `--json`.
#![allow(clippy::print_stdout)] // printing is this module's job

use std::fmt::Write;

use anyhow::Result;
use machinomy_core::{Approval, ApprovalState, ChannelStatus, Currency, DeviceId, PublicKey, SpendOutcome, Timestamp};
use machinomy_hub::Config;
use machinomy_hub::datadir::DataDir;
use machinomy_web::model::{
    BudgetView, ChannelView, DeviceView, HubStatus, InstallStatus, PairedDevice, PluginGrants, PluginInstalled,
    PluginStateName, PluginView, SpendingReport,
};
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

/// The zone times are printed in: the hub's `[hub] time_zone`, as the web UI shows them. Set
/// once by the command line before it prints; UTC until then. A process-wide setting because
/// every printer shows times and a CLI run talks to one hub.
static TIME_ZONE: std::sync::OnceLock<jiff::tz::TimeZone> = std::sync::OnceLock::new();

pub(crate) fn use_time_zone(zone: jiff::tz::TimeZone) {
    let _ = TIME_ZONE.set(zone);
}

fn time_zone() -> jiff::tz::TimeZone {
    TIME_ZONE.get().cloned().unwrap_or(jiff::tz::TimeZone::UTC)
}

/// `2026-11-24 12:59 CET`: a time in the hub's zone, with the zone's abbreviation.
fn when(t: Timestamp) -> String {
    local(t.secs(), &time_zone(), "%Y-%m-%d %H:%M %Z")
}

/// Unix milliseconds as `2026-11-24 12:59:07 CET`, in the hub's zone.
fn when_ms(at_ms: u64) -> String {
    local(at_ms / 1000, &time_zone(), "%Y-%m-%d %H:%M:%S %Z")
}

fn local(secs: u64, zone: &jiff::tz::TimeZone, format: &str) -> String {
    let at = i64::try_from(secs).ok().and_then(|secs| jiff::Timestamp::from_second(secs).ok());
    match at {
        Some(at) => at.to_zoned_datetime(zone.clone()).strftime(format).to_string(),
        // Past jiff's range (year 9999): only a hostile or broken hub sends that.
        None => format!("{secs} (unix seconds)"),
    }
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
    let mut out =
        format!("{:<64}  {:<8}  {:<24}  {:<8}  {:>16}  {:>16}\n", "ID", "ROLE", "PEER", "STATUS", "SPENT", "CAPACITY");
    for c in channels {
        let _ = writeln!(
            out,
            "{:<64}  {:<8}  {:<24}  {:<8}  {:>16}  {:>16}",
            c.id,
            format!("{:?}", c.role).to_lowercase(),
            cell(&c.counterparty.to_hex(), 24),
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

pub(crate) fn budget_removed(subject: &machinomy_core::Subject) -> String {
    format!("removed the budget of {}: it may spend nothing until it has one again\n", clean(&subject.to_string()))
}

fn approval_state(a: &Approval) -> String {
    match &a.state {
        ApprovalState::Pending => format!("pending, expires {}", when(a.expires_at)),
        ApprovalState::Approved { by, at } => {
            // The list shows whether the money moved, not only that it was allowed to.
            let outcome = match &a.outcome {
                Some(machinomy_core::SpendOutcome::Paid { .. }) => ", paid",
                Some(machinomy_core::SpendOutcome::Failed { .. }) => ", payment failed",
                None => "",
            };
            format!("approved by {} at {}{outcome}", clean(by), when(*at))
        }
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
            cell(&a.request.payee, 24),
            currency.format(a.request.amount),
            quoted(&a.request.memo),
            approval_state(a)
        );
    }
    out
}

/// `text` [`clean`]ed for a table column `width` wide: a longer one (a 64-hex key) keeps its
/// head and tail (`02a1b2c3d4e5…c9d8e7f6`); `show` prints it whole.
fn cell(text: &str, width: usize) -> String {
    let text = clean(text);
    let chars = text.chars().count();
    if chars <= width {
        return text;
    }
    let tail = 8.min(width / 2);
    let head = width.saturating_sub(tail + 1);
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(chars - tail).collect();
    format!("{start}…{end}")
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
        Some(SpendOutcome::Paid { at, channel, amount }) => {
            let paid = amount.map(|amount| format!(" {}", currency.format(amount))).unwrap_or_default();
            let on = channel.map(|channel| format!(" on channel {channel}")).unwrap_or_default();
            let _ = writeln!(out, "outcome    paid{paid} at {}{on}", when(*at));
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

/// How many of a device's state keys `device list` shows.
const STATE_KEYS_LISTED: usize = 3;
/// How many characters of one state value `device list` shows.
const STATE_VALUE_CHARS: usize = 24;

fn last_seen(d: &DeviceView) -> String {
    d.last_seen.map_or_else(|| "never".to_owned(), when)
}

/// `text` cut to `max` characters, `…` marking the cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The first few keys of what a device reported: `door=closed temperature_c=4.5 (+2 more)`.
fn state_summary(state: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut parts: Vec<String> = state
        .iter()
        .take(STATE_KEYS_LISTED)
        .map(|(key, value)| {
            let value = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            format!("{}={}", clean(&truncate(key, STATE_VALUE_CHARS)), clean(&truncate(&value, STATE_VALUE_CHARS)))
        })
        .collect();
    if state.len() > STATE_KEYS_LISTED {
        parts.push(format!("(+{} more)", state.len() - STATE_KEYS_LISTED));
    }
    parts.join(" ")
}

fn online(d: &DeviceView) -> &'static str {
    if d.online { "online" } else { "offline" }
}

pub(crate) fn devices(devices: &[DeviceView]) -> String {
    if devices.is_empty() {
        return "no devices paired (pair one with `machinomy-hub device add <ID>`)\n".to_owned();
    }
    let names: Vec<String> = devices.iter().map(|d| clean(&d.name)).collect();
    let id_width = devices.iter().map(|d| d.id.as_str().len()).chain([2]).max().unwrap_or(2);
    let name_width = names.iter().map(|n| n.chars().count()).chain([4]).max().unwrap_or(4).min(32);
    let mut out = format!(
        "{:<id_width$}  {:<11}  {:<7}  {:<20}  {:<name_width$}  {}\n",
        "ID", "KIND", "STATUS", "LAST SEEN", "NAME", "STATE"
    );
    for (d, name) in devices.iter().zip(&names) {
        let line = format!(
            "{:<id_width$}  {:<11}  {:<7}  {:<20}  {:<name_width$}  {}",
            d.id,
            clean(&d.kind),
            online(d),
            last_seen(d),
            name,
            state_summary(&d.state)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// One device in full, its state as pretty JSON.
pub(crate) fn device(d: &DeviceView) -> String {
    let mut out = format!("device     {}\nname       {}\nkind       {}\n", d.id, clean(&d.name), clean(&d.kind));
    if let Some(address) = &d.address {
        let _ = writeln!(out, "address    {}", clean(address));
    }
    if let Some(profile) = &d.profile {
        let _ = writeln!(out, "profile    {}", clean(profile));
    }
    match &d.public_key {
        Some(key) => {
            let _ = writeln!(out, "key        {key}");
        }
        None => out.push_str("key        none (it cannot ask to spend)\n"),
    }
    let _ = writeln!(out, "status     {}\nlast seen  {}\nadded      {}", online(d), last_seen(d), when(d.added_at));
    if d.state.is_empty() {
        out.push_str("state      nothing reported yet\n");
        return out;
    }
    let pretty = serde_json::to_string_pretty(&d.state).unwrap_or_else(|e| format!("(cannot show: {e})"));
    for (i, line) in pretty.lines().enumerate() {
        let label = if i == 0 { "state" } else { "" };
        let _ = writeln!(out, "{label:<11}{}", clean(line));
    }
    out
}

/// A newly paired device, then what must reach the device (shown this once), then what the
/// owner must still do.
pub(crate) fn paired(p: &PairedDevice) -> String {
    let mut out = device(&p.device);
    if p.credentials.is_some() || p.secret_key.is_some() {
        out.push_str("\nSave these now: they are shown only this once, and the hub cannot show them again.\n");
    }
    if let Some(c) = &p.credentials {
        let _ = writeln!(
            out,
            "broker     {}\nusername   {}\npassword   {}",
            clean(&c.broker),
            clean(&c.username),
            clean(&c.password)
        );
    }
    if let Some(secret) = &p.secret_key {
        let _ = writeln!(out, "secret key {} (the device signs its spend requests with it)", clean(secret));
    }
    if !p.next_steps.is_empty() {
        out.push_str("\nNext steps:\n");
        for step in &p.next_steps {
            let _ = writeln!(out, "  - {}", clean(step));
        }
    }
    out
}

pub(crate) fn removed(d: &DeviceView) -> String {
    format!(
        "removed device {} ({}): its credentials no longer work and its key can no longer spend\n",
        d.id,
        clean(&d.name)
    )
}

pub(crate) fn command_sent(id: &DeviceId, name: &str) -> String {
    // Sent, not done: the device answers with its next state, which `device show` has.
    format!("sent {} to {id}; its state as it next reports it: `machinomy-hub device show {id}`\n", clean(name))
}

/// A size: `16 MiB`, `64 KiB`, `1200 bytes`.
fn bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    match n {
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} bytes"),
    }
}

/// What a plugin may do beyond computing, one line each, amounts in the hub's currency.
fn grant_lines(g: &PluginGrants, currency: &Currency) -> Vec<String> {
    let mut lines = Vec::new();
    lines.extend(g.subscribe.iter().map(|f| format!("subscribe to {}", clean(f))));
    lines.extend(g.publish.iter().map(|f| format!("publish on {}", clean(f))));
    lines.extend(g.devices.iter().map(|d| match d.as_str() {
        "*" => "read the state of every device".to_owned(),
        d => format!("read the state of {}", clean(d)),
    }));
    if g.pay {
        lines.push("pay peers from its budget".to_owned());
    }
    if g.invoice {
        lines.push("invoice peers".to_owned());
    }
    lines.extend(
        g.call.iter().map(|c| format!("buy {} at up to {} a call", clean(&c.service), currency.format(c.max_price))),
    );
    for sell in &g.sell {
        let mut line = format!("sell {} at {} a call", clean(&sell.service), currency.format(sell.price));
        if !sell.description.is_empty() {
            let _ = write!(line, " ({})", clean(&sell.description));
        }
        lines.push(line);
    }
    if let Some(budget) = &g.budget {
        let approval = if budget.auto_approve.is_zero() {
            "every payment needs your approval".to_owned()
        } else {
            format!("payments up to {} need no approval", currency.format(budget.auto_approve))
        };
        lines.push(format!("spend up to {} a {} ({approval})", currency.format(budget.limit), budget.period));
    }
    lines
}

/// `; it may:` and the grants as a list, or that it may only compute.
fn may(g: &PluginGrants, currency: &Currency) -> String {
    let lines = grant_lines(g, currency);
    if lines.is_empty() {
        return "; it may only compute (nothing is granted)\n".to_owned();
    }
    let mut out = "; it may:\n".to_owned();
    for line in lines {
        let _ = writeln!(out, "  - {line}");
    }
    out
}

/// Why an enabled plugin is not running, if it is not.
fn not_running(p: &PluginView) -> Option<String> {
    if p.state != PluginStateName::Enabled || p.running {
        return None;
    }
    Some(match &p.last_fault {
        Some(fault) => format!("it is not running: {}", clean(fault)),
        None => "it is not running".to_owned(),
    })
}

pub(crate) fn plugins(plugins: &[PluginView]) -> String {
    if plugins.is_empty() {
        return "no plugins installed (install one with `machinomy-hub plugin install <DIR>`)\n".to_owned();
    }
    let names: Vec<String> = plugins.iter().map(|p| clean(&p.name)).collect();
    let versions: Vec<String> = plugins.iter().map(|p| clean(&p.version)).collect();
    let width = |column: &[String], title: usize| column.iter().map(|c| c.chars().count()).chain([title]).max();
    let name_width = width(&names, 4).unwrap_or(4);
    let version_width = width(&versions, 7).unwrap_or(7);
    let mut out = format!(
        "{:<name_width$}  {:<version_width$}  {:<11}  {:<7}  {:>6}  {:>7}  {:>8}  {}\n",
        "NAME", "VERSION", "STATE", "RUNNING", "FAULTS", "REFUSED", "EVENTS", "UPGRADE"
    );
    for ((p, name), version) in plugins.iter().zip(&names).zip(&versions) {
        let upgrade =
            p.pending_upgrade.as_ref().map(|u| format!("{} waits for approval", clean(&u.version))).unwrap_or_default();
        let line = format!(
            "{name:<name_width$}  {version:<version_width$}  {:<11}  {:<7}  {:>6}  {:>7}  {:>8}  {upgrade}",
            p.state.as_str(),
            if p.running { "yes" } else { "no" },
            p.faults,
            p.refused,
            p.events,
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// Width of the labels of `plugin show`.
const LABEL: usize = 13;

fn field(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "{label:<LABEL$}{value}");
}

/// One plugin in full.
pub(crate) fn plugin(p: &PluginView, currency: &Currency) -> String {
    let mut out = String::new();
    let name = clean(&p.name);
    field(&mut out, "plugin", &format!("{name} {}", clean(&p.version)));
    if !p.description.is_empty() {
        field(&mut out, "description", &clean(&p.description));
    }
    let state = match p.state {
        PluginStateName::Enabled if p.running => "enabled, running".to_owned(),
        PluginStateName::Enabled => "enabled, not running".to_owned(),
        PluginStateName::Disabled => "disabled".to_owned(),
        PluginStateName::Quarantined => format!(
            "quarantined: {}; `machinomy-hub plugin enable {name}` lets it run again",
            clean(p.quarantine_reason.as_deref().unwrap_or("too many faults"))
        ),
    };
    field(&mut out, "state", &state);
    let grants = grant_lines(&p.grants, currency);
    if grants.is_empty() {
        field(&mut out, "may", "only compute (nothing is granted)");
    }
    for (i, line) in grants.iter().enumerate() {
        field(&mut out, if i == 0 { "may" } else { "" }, line);
    }
    field(
        &mut out,
        "limits",
        &format!(
            "{} MiB of memory, {} fuel per event, {} of storage",
            p.limits.memory_mib,
            p.limits.fuel_per_event,
            bytes(p.limits.kv_bytes)
        ),
    );
    config_field(&mut out, p);
    if let Some(upgrade) = &p.pending_upgrade {
        field(&mut out, "upgrade", &format!("{} waits for your approval; it asks for more:", clean(&upgrade.version)));
        for ask in &upgrade.asks_for {
            field(&mut out, "", &format!("- {}", clean(ask)));
        }
        field(&mut out, "", &format!("approve it with `machinomy-hub plugin approve {name}`"));
    }
    field(&mut out, "events", &p.events.to_string());
    field(&mut out, "refused", &format!("{} (calls outside its grants)", p.refused));
    let faults = match &p.last_fault {
        Some(fault) => format!("{} recent (last: {})", p.faults, clean(fault)),
        None => format!("{} recent", p.faults),
    };
    field(&mut out, "faults", &faults);
    let subscribed = if p.subscriptions.is_empty() { "nothing".to_owned() } else { clean(&p.subscriptions.join(", ")) };
    field(&mut out, "subscribed", &subscribed);
    field(&mut out, "timers", &p.timers.to_string());
    field(&mut out, "storage", &format!("{} of {}", bytes(p.storage_used), bytes(p.limits.kv_bytes)));
    field(&mut out, "installed", &when(p.installed_at));
    field(&mut out, "updated", &when(p.updated_at));
    if p.recent.is_empty() {
        field(&mut out, "recent", "nothing logged");
    }
    for (i, line) in p.recent.iter().enumerate() {
        let text = format!("{}  {:<5}  {}", when_ms(line.at_ms), clean(&line.level), clean(&line.text));
        field(&mut out, if i == 0 { "recent" } else { "" }, &text);
    }
    out
}

/// What an install (`upgrade` false) or an upgrade did.
pub(crate) fn installed(installed: &PluginInstalled, upgrade: bool, currency: &Currency) -> String {
    let p = &installed.plugin;
    let name = clean(&p.name);
    // Said first: an upgrade that drops one waiting for approval must not do so silently.
    let replaced = installed.replaced_upgrade.as_ref().map_or_else(String::new, |waiting| {
        format!("{name} {} no longer waits for approval: this upgrade replaces it\n", clean(waiting))
    });
    let older = if installed.downgrade { ", an older version" } else { "" };
    let mut out = match (installed.status, &p.pending_upgrade) {
        (InstallStatus::AwaitingApproval, Some(pending)) => {
            let mut out = format!(
                "{replaced}{name} {}{older} asks for more and waits for your approval:\n",
                clean(&pending.version)
            );
            for ask in &pending.asks_for {
                let _ = writeln!(out, "  - {}", clean(ask));
            }
            let _ = writeln!(
                out,
                "{name} {} keeps running as it is until then; approve with `machinomy-hub plugin approve {name}`",
                clean(&p.version)
            );
            return out;
        }
        (InstallStatus::AwaitingApproval, None) => {
            return format!(
                "{name}'s new version waits for your approval: see `machinomy-hub plugin show {name}`, then `machinomy-hub plugin approve {name}`\n"
            );
        }
        (InstallStatus::Ready, _) if upgrade && installed.downgrade => format!(
            "{replaced}downgraded {name} from {} to {}, an older version",
            clean(installed.previous_version.as_deref().unwrap_or("?")),
            clean(&p.version)
        ),
        (InstallStatus::Ready, _) if upgrade => format!("{replaced}upgraded {name} to {}", clean(&p.version)),
        (InstallStatus::Ready, _) => format!("installed {name} {}", clean(&p.version)),
    };
    out.push_str(&may(&p.grants, currency));
    if let Some(why) = not_running(p) {
        let _ = writeln!(out, "{why}; see `machinomy-hub plugin show {name}`");
    }
    out
}

/// An approved upgrade.
pub(crate) fn plugin_approved(p: &PluginView, currency: &Currency) -> String {
    let mut out = format!("approved: {} {} runs from now on", clean(&p.name), clean(&p.version));
    out.push_str(&may(&p.grants, currency));
    out
}

/// The plugin's settings as pretty JSON under a `config` label.
fn config_field(out: &mut String, p: &PluginView) {
    if p.config.is_empty() {
        field(out, "config", "none");
        return;
    }
    let pretty = serde_json::to_string_pretty(&p.config).unwrap_or_else(|e| format!("(cannot show: {e})"));
    for (i, line) in pretty.lines().enumerate() {
        field(out, if i == 0 { "config" } else { "" }, &clean(line));
    }
    let yours = match p.overridden.is_empty() {
        true => "none: all are the plugin's defaults".to_owned(),
        false => clean(&p.overridden.join(", ")),
    };
    field(out, "set by you", &yours);
}

/// `plugin config`: the settings, and after a change (from `before`) whether the plugin runs
/// with them.
pub(crate) fn plugin_settings(p: &PluginView, before: Option<&PluginView>) -> String {
    let name = clean(&p.name);
    let mut out = String::new();
    match before {
        None => {}
        Some(before) if before.config == p.config => {
            let _ = writeln!(out, "the settings of {name} are as they were");
        }
        Some(before) => {
            let now = match (&p.state, not_running(p)) {
                (PluginStateName::Enabled, None) => "it restarted with them".to_owned(),
                (PluginStateName::Enabled, Some(why)) => why,
                (PluginStateName::Quarantined, _) => format!(
                    "it is quarantined: {}; see `machinomy-hub plugin show {name}`",
                    clean(p.quarantine_reason.as_deref().unwrap_or("it faulted"))
                ),
                (PluginStateName::Disabled, _) => {
                    format!("it uses them when enabled (`machinomy-hub plugin enable {name}`)")
                }
            };
            let _ = writeln!(out, "changed the settings of {name}; {now}");
            let refused = p.refused.saturating_sub(before.refused);
            if refused > 0 {
                let calls = if refused == 1 { "1 of its calls was" } else { &format!("{refused} of its calls were") };
                let _ = writeln!(
                    out,
                    "as it started, {calls} refused as outside its grants (a device or service the new settings \
                     name may need an upgrade that grants it): see `machinomy-hub plugin show {name}`"
                );
            }
        }
    }
    config_field(&mut out, p);
    out
}

/// A plugin just enabled or disabled.
pub(crate) fn plugin_switched(p: &PluginView) -> String {
    let name = clean(&p.name);
    match p.state {
        PluginStateName::Enabled => match not_running(p) {
            Some(why) => format!("enabled {name}, but {why}; see `machinomy-hub plugin show {name}`\n"),
            None => format!("enabled {name}: it is running\n"),
        },
        PluginStateName::Disabled => {
            format!("disabled {name}: it is stopped until `machinomy-hub plugin enable {name}`\n")
        }
        PluginStateName::Quarantined => format!("{name} is quarantined\n"),
    }
}

pub(crate) fn plugin_removed(name: &str) -> String {
    format!("removed plugin {} with its files and storage\n", clean(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cells_keep_their_head_and_tail_within_the_column() {
        let key = "0123456789abcdef".repeat(4);
        let shown = cell(&key, 24);
        assert_eq!(shown, "0123456789abcde…89abcdef");
        assert_eq!(shown.chars().count(), 24);
        assert_eq!(cell("device:fridge", 24), "device:fridge");
        assert_eq!(cell("a\u{1b}b", 24), "a\\u{1b}b");
    }

    #[test]
    fn times_are_shown_in_the_hubs_zone_with_its_abbreviation() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let winter = Timestamp::from_civil(2026, 11, 24).secs() + 11 * 3600 + 59 * 60 + 7;
        assert_eq!(local(winter, &berlin, "%Y-%m-%d %H:%M:%S %Z"), "2026-11-24 12:59:07 CET");
        let summer = Timestamp::from_civil(2026, 7, 1).secs() + 23 * 3600;
        assert_eq!(local(summer, &berlin, "%Y-%m-%d %H:%M %Z"), "2026-07-02 01:00 CEST");
        assert_eq!(local(winter, &jiff::tz::TimeZone::UTC, "%Y-%m-%d %H:%M %Z"), "2026-11-24 11:59 UTC");
        assert_eq!(local(u64::MAX, &berlin, "%Y"), format!("{} (unix seconds)", u64::MAX));
    }

    #[test]
    fn control_and_bidi_characters_are_shown_not_obeyed() {
        assert_eq!(clean("shop\u{1b}[2J\nnext\u{7}\u{9b}\u{202e}"), "shop\\u{1b}[2J\\nnext\\u{7}\\u{9b}\\u{202e}");
        assert_eq!(clean("plain café: 1.5 USD"), "plain café: 1.5 USD");
        assert_eq!(quoted("a\"b\u{1b}"), "\"a\\\"b\\u{1b}\"");
        assert_eq!(csv("key,paid\r\n\"a\u{1b}b\",1\r\n"), "key,paid\r\n\"a\\u{1b}b\",1\r\n");
    }

    fn sample_device() -> DeviceView {
        let mut state = serde_json::Map::new();
        state.insert("door".to_owned(), serde_json::json!("closed\u{1b}[2J"));
        state.insert("temperature_c".to_owned(), serde_json::json!(4.5));
        DeviceView {
            id: "fridge".parse().unwrap(),
            name: "Kitchen\nfridge \u{202e}".to_owned(),
            kind: "mqtt".to_owned(),
            address: None,
            profile: None,
            public_key: Some(PublicKey::from_bytes([0x0f; 32])),
            online: true,
            last_seen: Some(Timestamp::from_civil(2026, 11, 24)),
            state,
            added_at: Timestamp::from_civil(2026, 11, 1),
            recent_events: Vec::new(),
        }
    }

    #[test]
    fn the_device_list_escapes_what_devices_report_and_summarises_their_state() {
        let mut quiet = sample_device();
        quiet.id = "thermometer".parse().unwrap();
        quiet.name = "Balcony".to_owned();
        quiet.kind = "ble".to_owned();
        quiet.online = false;
        quiet.last_seen = None;
        quiet.state = (0..5).map(|i| (format!("k{i}"), serde_json::json!("x".repeat(40)))).collect();
        let text = devices(&[sample_device(), quiet]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID           KIND         STATUS   LAST SEEN"), "{text}");
        assert!(
            lines[1].contains(
                "online   2026-11-24 00:00 UTC  Kitchen\\nfridge \\u{202e}  door=closed\\u{1b}[2J temperature_c=4.5"
            ),
            "{text}"
        );
        assert!(lines[2].contains("offline  never"), "{text}");
        assert!(lines[1].starts_with("fridge       mqtt"), "ids are padded like their header: {text}");
        assert!(lines[2].ends_with(&format!("k2={}… (+2 more)", "x".repeat(23))), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'));
        assert_eq!(devices(&[]), "no devices paired (pair one with `machinomy-hub device add <ID>`)\n");
    }

    #[test]
    fn a_device_is_shown_whole_with_its_state_as_escaped_json() {
        let text = device(&sample_device());
        assert!(
            text.starts_with("device     fridge\nname       Kitchen\\nfridge \\u{202e}\nkind       mqtt\n"),
            "{text}"
        );
        assert!(text.contains(&format!("key        {}\n", "0f".repeat(32))), "{text}");
        assert!(text.contains("last seen  2026-11-24 00:00 UTC\n"), "{text}");
        assert!(text.contains("state      {\n             \"door\": \"closed\\u001b[2J\",\n"), "{text}");
        assert!(!text.contains('\u{1b}'));
        let mut empty = sample_device();
        empty.state.clear();
        empty.public_key = None;
        empty.address = Some("A4:C1:38:00:11:22".to_owned());
        let text = device(&empty);
        assert!(text.contains("address    A4:C1:38:00:11:22\n") && text.contains("key        none"), "{text}");
        assert!(text.ends_with("state      nothing reported yet\n"), "{text}");
    }

    #[test]
    fn pairing_shows_the_credentials_once_with_a_warning_and_the_next_steps() {
        let paired_device = PairedDevice {
            device: sample_device(),
            credentials: Some(machinomy_web::model::MqttCredentials {
                broker: "192.168.1.10:1883".to_owned(),
                username: "fridge".to_owned(),
                password: "s3cret".to_owned(),
            }),
            secret_key: Some("ab".repeat(32)),
            next_steps: vec!["add the user to your broker\u{1b}".to_owned()],
        };
        let text = paired(&paired_device);
        assert!(text.starts_with(&device(&paired_device.device)));
        assert!(text.contains("shown only this once"), "{text}");
        assert!(text.contains("broker     192.168.1.10:1883\nusername   fridge\npassword   s3cret\n"), "{text}");
        assert!(text.contains(&format!("secret key {}", "ab".repeat(32))), "{text}");
        assert!(text.ends_with("Next steps:\n  - add the user to your broker\\u{1b}\n"), "{text}");
        let bare = PairedDevice { credentials: None, secret_key: None, next_steps: Vec::new(), ..paired_device };
        assert_eq!(paired(&bare), device(&bare.device));
    }

    #[test]
    fn the_approvals_list_says_whether_the_money_moved() {
        let request = machinomy_core::SpendRequest {
            subject: "device:fridge".parse().unwrap(),
            payee: "grocer".to_owned(),
            amount: machinomy_core::Amount::from_base_units(5),
            memo: "milk".to_owned(),
            reference: "r1".to_owned(),
            created_at: Timestamp::from_civil(2026, 11, 24),
        };
        let decision = machinomy_core::Decision::Approved;
        let mut approval = Approval::from_decision(1, request, &decision, Timestamp::from_civil(2026, 11, 24));
        assert!(!approval_state(&approval).contains(','), "{}", approval_state(&approval));
        let at = Timestamp::from_civil(2026, 11, 24);
        approval.outcome = Some(machinomy_core::SpendOutcome::Failed { at, reason: "unreachable".to_owned() });
        assert!(approval_state(&approval).ends_with(", payment failed"), "{}", approval_state(&approval));
        approval.outcome = Some(machinomy_core::SpendOutcome::Paid { at, channel: None, amount: None });
        assert!(approval_state(&approval).ends_with(", paid"), "{}", approval_state(&approval));
    }

    fn sample_plugin() -> PluginView {
        use machinomy_core::Amount;
        use machinomy_core::plugin::{BudgetGrant, CallGrant, Limits};
        let mut config = serde_json::Map::new();
        config.insert("every_secs".to_owned(), serde_json::json!(600));
        config.insert("service".to_owned(), serde_json::json!("weather"));
        PluginView {
            name: "weather-buyer".to_owned(),
            version: "0.1.0".to_owned(),
            description: "Buys a forecast\u{1b}[2J".to_owned(),
            state: PluginStateName::Enabled,
            quarantine_reason: None,
            running: true,
            grants: PluginGrants {
                publish: vec!["machinomy/irrigation/cmd/#".to_owned()],
                devices: vec!["*".to_owned()],
                call: vec![CallGrant {
                    service: "weather.forecast".to_owned(),
                    max_price: Amount::from_base_units(2_000_000),
                }],
                budget: Some(BudgetGrant {
                    period: machinomy_core::Period::Day,
                    limit: Amount::from_base_units(1_000_000_000),
                    auto_approve: Amount::from_base_units(2_000_000),
                }),
                ..PluginGrants::default()
            },
            limits: Limits::default(),
            config,
            overridden: vec!["every_secs".to_owned()],
            pending_upgrade: None,
            faults: 0,
            last_fault: None,
            refused: 2,
            events: 1234,
            subscriptions: Vec::new(),
            timers: 1,
            storage_used: 120,
            recent: vec![machinomy_web::model::PluginLogLine {
                at_ms: Timestamp::from_civil(2026, 11, 24).secs() * 1000 + 61_500,
                level: "info".to_owned(),
                text: "paused\nirrigation".to_owned(),
            }],
            installed_at: Timestamp::from_civil(2026, 11, 1),
            updated_at: Timestamp::from_civil(2026, 11, 2),
        }
    }

    #[test]
    fn the_plugin_list_is_an_aligned_table() {
        let mut flaky = sample_plugin();
        flaky.name = "flaky".to_owned();
        flaky.version = "10.0.0-rc1".to_owned();
        flaky.state = PluginStateName::Quarantined;
        flaky.running = false;
        flaky.faults = 3;
        flaky.pending_upgrade =
            Some(machinomy_web::model::PendingUpgrade { version: "11.0.0".to_owned(), asks_for: Vec::new() });
        let text = plugins(&[flaky, sample_plugin()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "NAME           VERSION     STATE        RUNNING  FAULTS  REFUSED    EVENTS  UPGRADE",
                "flaky          10.0.0-rc1  quarantined  no            3        2      1234  11.0.0 waits for approval",
                "weather-buyer  0.1.0       enabled      yes           0        2      1234",
            ]
        );
        assert!(plugins(&[]).starts_with("no plugins installed"));
    }

    #[test]
    fn a_plugin_is_shown_whole_with_its_grants_and_log() {
        let usd = Currency::usd();
        let text = plugin(&sample_plugin(), &usd);
        let expected_start = "plugin       weather-buyer 0.1.0\n\
                              description  Buys a forecast\\u{1b}[2J\n\
                              state        enabled, running\n\
                              may          publish on machinomy/irrigation/cmd/#\n\
                              \x20            read the state of every device\n\
                              \x20            buy weather.forecast at up to 0.002 USD a call\n\
                              \x20            spend up to 1.00 USD a day (payments up to 0.002 USD need no approval)\n\
                              limits       16 MiB of memory, 50000000 fuel per event, 1 MiB of storage\n\
                              config       {\n\
                              \x20              \"every_secs\": 600,\n\
                              \x20              \"service\": \"weather\"\n\
                              \x20            }\n\
                              set by you   every_secs\n";
        assert!(text.starts_with(expected_start), "{text}");
        assert!(text.contains("refused      2 (calls outside its grants)\n"), "{text}");
        assert!(text.contains("storage      120 bytes of 1 MiB\n"), "{text}");
        assert!(text.contains("installed    2026-11-01 00:00 UTC\n"), "{text}");
        assert!(text.ends_with("recent       2026-11-24 00:01:01 UTC  info   paused\\nirrigation\n"), "{text}");

        let mut waiting = sample_plugin();
        waiting.state = PluginStateName::Quarantined;
        waiting.quarantine_reason = Some("3 faults".to_owned());
        waiting.grants = PluginGrants::default();
        waiting.pending_upgrade = Some(machinomy_web::model::PendingUpgrade {
            version: "0.2.0".to_owned(),
            asks_for: vec!["pay peers".to_owned()],
        });
        waiting.recent.clear();
        let text = plugin(&waiting, &usd);
        assert!(
            text.contains("state        quarantined: 3 faults; `machinomy-hub plugin enable weather-buyer`"),
            "{text}"
        );
        assert!(text.contains("may          only compute (nothing is granted)\n"), "{text}");
        assert!(
            text.contains(
                "upgrade      0.2.0 waits for your approval; it asks for more:\n             - pay peers\n             approve it with `machinomy-hub plugin approve weather-buyer`\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("recent       nothing logged\n"), "{text}");
    }

    #[test]
    fn a_settings_change_says_whether_the_plugin_runs_with_them() {
        let before = sample_plugin();
        let mut p = sample_plugin();
        p.config.insert("every_secs".to_owned(), serde_json::json!(60));
        let text = plugin_settings(&p, Some(&before));
        assert!(text.starts_with("changed the settings of weather-buyer; it restarted with them\nconfig"), "{text}");
        assert!(plugin_settings(&p, None).starts_with("config"));
        let same = plugin_settings(&before, Some(&before));
        assert!(same.starts_with("the settings of weather-buyer are as they were\n"), "{same}");
        p.refused = before.refused + 2;
        let text = plugin_settings(&p, Some(&before));
        assert!(text.contains("as it started, 2 of its calls were refused as outside its grants"), "{text}");
        p.refused = before.refused + 1;
        let text = plugin_settings(&p, Some(&before));
        assert!(text.contains("as it started, 1 of its calls was refused"), "{text}");
        p.refused = before.refused;
        p.state = PluginStateName::Disabled;
        p.running = false;
        let text = plugin_settings(&p, Some(&before));
        assert!(text.contains("it uses them when enabled (`machinomy-hub plugin enable weather-buyer`)"), "{text}");
        p.state = PluginStateName::Quarantined;
        p.quarantine_reason = Some("3 faults in 10 minutes".to_owned());
        let text = plugin_settings(&p, Some(&before));
        assert!(text.contains("it is quarantined: 3 faults in 10 minutes; see"), "{text}");
    }

    #[test]
    fn an_install_says_what_the_plugin_may_do_and_an_upgrade_what_it_asks_for() {
        let usd = Currency::usd();
        let ready = PluginInstalled::install(InstallStatus::Ready, sample_plugin());
        let text = installed(&ready, false, &usd);
        assert!(
            text.starts_with("installed weather-buyer 0.1.0; it may:\n  - publish on machinomy/irrigation/cmd/#\n"),
            "{text}"
        );
        assert!(installed(&ready, true, &usd).starts_with("upgraded weather-buyer to 0.1.0; it may:\n"));
        let mut bare = sample_plugin();
        bare.grants = PluginGrants::default();
        bare.running = false;
        bare.last_fault = Some("trap in on_start".to_owned());
        let text = installed(&PluginInstalled::install(InstallStatus::Ready, bare), false, &usd);
        assert_eq!(
            text,
            "installed weather-buyer 0.1.0; it may only compute (nothing is granted)\n\
             it is not running: trap in on_start; see `machinomy-hub plugin show weather-buyer`\n"
        );
        let mut waiting = sample_plugin();
        waiting.pending_upgrade = Some(machinomy_web::model::PendingUpgrade {
            version: "0.2.0".to_owned(),
            asks_for: vec!["pay peers".to_owned(), "subscribe to machinomy/rain/#".to_owned()],
        });
        let text = installed(&PluginInstalled::install(InstallStatus::AwaitingApproval, waiting.clone()), true, &usd);
        assert_eq!(
            text,
            "weather-buyer 0.2.0 asks for more and waits for your approval:\n  - pay peers\n  - subscribe to machinomy/rain/#\n\
             weather-buyer 0.1.0 keeps running as it is until then; approve with `machinomy-hub plugin approve weather-buyer`\n"
        );

        // A rollback is allowed and said to be one; a waiting upgrade it replaces is named.
        let rollback = PluginInstalled {
            status: InstallStatus::Ready,
            plugin: sample_plugin(),
            previous_version: Some("0.3.0".to_owned()),
            downgrade: true,
            replaced_upgrade: Some("0.4.0".to_owned()),
        };
        let text = installed(&rollback, true, &usd);
        assert!(
            text.starts_with(
                "weather-buyer 0.4.0 no longer waits for approval: this upgrade replaces it\n\
                 downgraded weather-buyer from 0.3.0 to 0.1.0, an older version; it may:\n"
            ),
            "{text}"
        );
        let replacing = PluginInstalled {
            status: InstallStatus::AwaitingApproval,
            plugin: waiting,
            previous_version: Some("0.1.0".to_owned()),
            downgrade: false,
            replaced_upgrade: Some("0.3.0".to_owned()),
        };
        let text = installed(&replacing, true, &usd);
        assert!(
            text.starts_with("weather-buyer 0.3.0 no longer waits for approval: this upgrade replaces it\nweather-buyer 0.2.0 asks for more"),
            "{text}"
        );
    }
}
