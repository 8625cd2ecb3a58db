//! What the CLI prints: short aligned text for people, or JSON with `--json`.
#![allow(clippy::print_stdout)] // printing is this module's job

use std::fmt::Write;

use anyhow::Result;
use machinomy_core::{Approval, ApprovalState, ChannelStatus, Currency, DeviceId, PublicKey, SpendOutcome, Timestamp};
use machinomy_hub::Config;
use machinomy_hub::datadir::DataDir;
use machinomy_web::model::{BudgetView, ChannelView, DeviceView, HubStatus, PairedDevice, SpendingReport};
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
        approval.outcome = Some(machinomy_core::SpendOutcome::Paid { at, channel: None });
        assert!(approval_state(&approval).ends_with(", paid"), "{}", approval_state(&approval));
    }
}
