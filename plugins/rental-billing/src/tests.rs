use machinomy_sdk::log::Level;
use machinomy_sdk::mock::{self, Import, Request};
use machinomy_sdk::Error;

use super::*;

const MANIFEST: &str = include_str!("../plugin.toml");
const RENTER: &str = "5a3c0e9f1d2b4a6c8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d";
const HOUR: u64 = 3_600_000;

/// A started plugin with the shipped manifest, the test renter, and the given prices.
fn started(price_per_kwh: &str, price_per_hour: &str) -> RentalBilling {
    mock::reset();
    mock::load_manifest(MANIFEST).unwrap();
    mock::set_config_value("renter", RENTER);
    mock::set_config_value("price_per_kwh", price_per_kwh);
    mock::set_config_value("price_per_hour", price_per_hour);
    let mut plugin = RentalBilling::default();
    plugin.on_start();
    plugin
}

fn meter(plugin: &mut RentalBilling, wh: u64) {
    plugin.on_message("machinomy/meter/state", format!(r#"{{"energy_wh":{wh}}}"#).as_bytes());
}

fn checkout(plugin: &mut RentalBilling, payload: &str) {
    plugin.on_message("machinomy/meter/event/checkout", payload.as_bytes());
}

/// The invoices sent since the last call: (request, amount, memo).
fn invoices() -> Vec<(RequestId, Amount, String)> {
    mock::take_requests()
        .into_iter()
        .map(|r| match r {
            Request::Invoice { id, peer, amount, memo } => {
                assert_eq!(peer, RENTER);
                (id, amount, memo)
            }
            other => panic!("not an invoice: {other:?}"),
        })
        .collect()
}

/// The statements published since the last call, as JSON text.
fn statements() -> Vec<String> {
    mock::take_published()
        .into_iter()
        .map(|p| {
            assert_eq!(p.topic, STATEMENT_TOPIC);
            assert!(!p.retain);
            p.text()
        })
        .collect()
}

#[test]
fn start_subscribes_to_the_meter_and_sets_an_hourly_timer() {
    let _plugin = started("1000", "0");
    assert_eq!(mock::subscriptions(), ["machinomy/meter/state", "machinomy/meter/event/checkout"]);
    let timers = mock::timers();
    assert_eq!(timers.len(), 1);
    assert_eq!((timers[0].delay_ms, timers[0].repeat), (HOUR, true));
}

#[test]
fn bills_energy_and_time_since_the_first_reading() {
    // 1 base unit per Wh and 1 per second.
    let mut plugin = started("1000", "3600");
    meter(&mut plugin, 10_000);
    mock::advance(HOUR / 2);
    meter(&mut plugin, 12_000);
    mock::run_for(&mut plugin, HOUR / 2);
    assert_eq!(invoices(), [(RequestId(1), Amount(2000 + 3600), "bill 1: 2000 Wh, 60 min".to_string())]);
    assert_eq!(statements(), [r#"{"bill":1,"energy_wh":2000,"ms":3600000,"amount":"5600","status":"invoiced"}"#]);

    // The next hour bills only what came after.
    meter(&mut plugin, 12_500);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices(), [(RequestId(2), Amount(500 + 3600), "bill 2: 500 Wh, 60 min".to_string())]);
    assert_eq!(statements(), [r#"{"bill":2,"energy_wh":500,"ms":3600000,"amount":"4100","status":"invoiced"}"#]);
}

#[test]
fn the_stay_starts_at_the_meter_state_known_at_start() {
    mock::reset();
    mock::load_manifest(MANIFEST).unwrap();
    mock::set_config_value("renter", RENTER);
    mock::set_config_value("price_per_kwh", "1000");
    mock::set_config_value("price_per_hour", "0");
    mock::set_device_state("meter", r#"{"energy_wh":500}"#);
    let mut plugin = RentalBilling::default();
    plugin.on_start();
    meter(&mut plugin, 500); // the retained state, delivered again: nothing changes
    meter(&mut plugin, 800);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(300));
}

#[test]
fn remainders_carry_to_the_next_bill() {
    // 1 base unit per kWh: 999 Wh is not yet a unit.
    let mut plugin = started("1", "0");
    meter(&mut plugin, 0);
    meter(&mut plugin, 999);
    mock::run_for(&mut plugin, HOUR);
    assert!(invoices().is_empty(), "a zero bill is not sent");
    assert!(statements().is_empty());
    meter(&mut plugin, 1000);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices(), [(RequestId(1), Amount(1), "bill 1: 1 Wh, 60 min".to_string())]);
    meter(&mut plugin, 2999);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(1)); // 1999 Wh: one unit, 999 carried
    meter(&mut plugin, 3000);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(1));
}

#[test]
fn time_remainders_carry_too() {
    // 1 base unit per hour, billed every 20 minutes: every third bill is one unit.
    let plugin = started("0", "1");
    mock::set_config_value("bill_every_secs", 1200u32);
    let mut plugin_20min = RentalBilling::default();
    plugin_20min.on_start();
    drop(plugin);
    meter(&mut plugin_20min, 0);
    mock::run_for(&mut plugin_20min, 3 * HOUR);
    let amounts: Vec<Amount> = invoices().into_iter().map(|(_, a, _)| a).collect();
    assert_eq!(amounts, [Amount(1), Amount(1), Amount(1)]);
}

#[test]
fn nothing_is_billed_without_a_stay() {
    let mut plugin = started("1000", "3600");
    mock::run_for(&mut plugin, 3 * HOUR);
    assert!(invoices().is_empty());
    assert!(statements().is_empty());
}

#[test]
fn checkout_bills_what_is_due_and_ends_the_stay() {
    let mut plugin = started("1000", "3600");
    meter(&mut plugin, 100);
    mock::advance(60_000);
    checkout(&mut plugin, r#"{"energy_wh":600}"#);
    assert_eq!(invoices(), [(RequestId(1), Amount(500 + 60), "bill 1: 500 Wh, 1 min".to_string())]);
    assert_eq!(statements(), [r#"{"bill":1,"energy_wh":500,"ms":60000,"amount":"560","status":"invoiced"}"#]);

    // No stay: the timer bills nothing, and the reading at checkout (the meter's retained
    // state after a hub restart) does not open one.
    mock::run_for(&mut plugin, HOUR);
    meter(&mut plugin, 600);
    mock::run_for(&mut plugin, HOUR);
    assert!(invoices().is_empty());
    checkout(&mut plugin, "{}"); // a second checkout is harmless
    assert!(invoices().is_empty());

    // A new reading starts the next stay, from that reading and that time; the timer keeps its
    // rhythm, so the first bill of this stay covers 59 minutes.
    meter(&mut plugin, 650);
    meter(&mut plugin, 700);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices(), [(RequestId(2), Amount(50 + 3540), "bill 2: 50 Wh, 59 min".to_string())]);
}

#[test]
fn a_checkout_event_that_is_not_json_still_checks_out() {
    let mut plugin = started("1000", "0");
    meter(&mut plugin, 100);
    meter(&mut plugin, 150);
    checkout(&mut plugin, "bye");
    assert_eq!(invoices()[0].1, Amount(50));
    assert!(mock::logged(Level::Warn, "checkout event is not JSON"));
}

#[test]
fn paid_and_pending_answers_are_published() {
    let mut plugin = started("1000", "0");
    meter(&mut plugin, 0);
    meter(&mut plugin, 42);
    mock::run_for(&mut plugin, HOUR);
    let (request, _, _) = invoices()[0].clone();
    statements();

    plugin.on_spend_result(request, SpendStatus::Pending, b"7");
    plugin.on_spend_result(RequestId(99), SpendStatus::Paid, b""); // not ours: ignored
    plugin.on_spend_result(request, SpendStatus::Paid, b"");
    assert_eq!(
        statements(),
        [r#"{"bill":1,"amount":"42","status":"pending"}"#, r#"{"bill":1,"amount":"42","status":"paid"}"#]
    );
    // A paid bill is settled: a repeated answer changes nothing.
    plugin.on_spend_result(request, SpendStatus::Denied, b"late");
    assert!(statements().is_empty());
}

#[test]
fn denied_and_failed_bills_are_added_to_the_next_bill() {
    let mut plugin = started("1000", "0");
    meter(&mut plugin, 0);
    meter(&mut plugin, 100);
    mock::run_for(&mut plugin, HOUR);
    let first = invoices()[0].0;
    meter(&mut plugin, 130);
    mock::run_for(&mut plugin, HOUR);
    let second = invoices()[0].0;
    statements();

    plugin.on_spend_result(first, SpendStatus::Denied, b"over budget");
    plugin.on_spend_result(second, SpendStatus::Failed, b"no route");
    assert_eq!(
        statements(),
        [r#"{"bill":1,"amount":"100","status":"denied"}"#, r#"{"bill":2,"amount":"30","status":"failed"}"#]
    );
    assert!(mock::logged(Level::Warn, "over budget"));

    meter(&mut plugin, 135);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(100 + 30 + 5));
    assert_eq!(
        statements(),
        [r#"{"bill":3,"energy_wh":5,"ms":3600000,"amount":"135","status":"invoiced","outstanding":"130"}"#]
    );
}

#[test]
fn an_invoice_the_hub_refuses_is_billed_next_time() {
    let mut plugin = started("1000", "0");
    meter(&mut plugin, 0);
    meter(&mut plugin, 10);
    mock::fail_next(Import::Invoice, Error::Busy);
    mock::run_for(&mut plugin, HOUR);
    assert!(invoices().is_empty());
    assert!(statements().is_empty());
    assert!(mock::logged(Level::Error, "cannot invoice"));
    meter(&mut plugin, 15);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices(), [(RequestId(1), Amount(15), "bill 1: 5 Wh, 60 min".to_string())]);
}

#[test]
fn nothing_is_billed_while_the_renter_is_unset() {
    let mut plugin = started("1000", "0");
    mock::set_config_value("renter", "");
    let mut plugin_without_renter = RentalBilling::default();
    drop(plugin);
    meter(&mut plugin_without_renter, 0);
    meter(&mut plugin_without_renter, 70);
    mock::run_for(&mut plugin_without_renter, HOUR);
    assert!(invoices().is_empty());
    assert!(mock::logged(Level::Error, "renter is empty"));

    // The owner sets the renter (the hub restarts the plugin): everything since the start is billed.
    mock::set_config_value("renter", RENTER);
    plugin = RentalBilling::default();
    plugin.on_start();
    meter(&mut plugin, 90);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(90));
}

#[test]
fn bad_prices_bill_nothing() {
    let mut plugin = started("0.3", "0");
    meter(&mut plugin, 0);
    meter(&mut plugin, 100);
    mock::run_for(&mut plugin, HOUR);
    assert!(invoices().is_empty());
    assert!(mock::logged(Level::Error, "price_per_kwh"));
}

#[test]
fn malformed_meter_states_are_ignored() {
    let mut plugin = started("1000", "0");
    for payload in ["", "garbage", "[1]", r#"{"energy_wh":"12"}"#, r#"{"energy_wh":-5}"#, r#"{"energy_wh":1.5}"#, "{}"]
    {
        plugin.on_message("machinomy/meter/state", payload.as_bytes());
    }
    plugin.on_message("machinomy/other/state", br#"{"energy_wh":1}"#);
    assert_eq!(mock::logs().iter().filter(|l| l.level == Level::Warn).count(), 7);
    // No stay was opened by any of them.
    meter(&mut plugin, 1000);
    meter(&mut plugin, 1001);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(1));
}

#[test]
fn the_meter_going_back_is_never_billed_negative() {
    let mut plugin = started("1000", "0");
    meter(&mut plugin, 5000);
    meter(&mut plugin, 5100);
    meter(&mut plugin, 20); // a replaced meter
    meter(&mut plugin, 50);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(30));
    assert!(mock::logged(Level::Warn, "went back"));
}

#[test]
fn a_fresh_instance_carries_on_from_kv() {
    let mut plugin = started("1000", "3600");
    meter(&mut plugin, 0);
    meter(&mut plugin, 10);
    // The host faulted the instance and made a new one: no on_start, memory gone, kv kept.
    drop(plugin);
    let mut fresh = RentalBilling::default();
    meter(&mut fresh, 20);
    mock::run_for(&mut fresh, HOUR);
    assert_eq!(invoices()[0].1, Amount(20 + 3600));
    let request = RequestId(1);
    drop(fresh);
    let mut fresh = RentalBilling::default();
    fresh.on_spend_result(request, SpendStatus::Denied, b"no");
    assert_eq!(statements().last().map(String::as_str), Some(r#"{"bill":1,"amount":"3620","status":"denied"}"#));
}

#[test]
fn a_restart_replaces_the_timer_and_ignores_the_old_one() {
    let mut plugin = started("1000", "0");
    let old = mock::timers()[0].id;
    plugin.on_start();
    let timers = mock::timers();
    assert_eq!(timers.len(), 1, "the old timer was cancelled");
    assert_ne!(timers[0].id, old);

    meter(&mut plugin, 0);
    meter(&mut plugin, 10);
    plugin.on_timer(old); // fired by a host that had not cancelled it
    assert!(invoices().is_empty());
    plugin.on_timer(timers[0].id);
    assert_eq!(invoices().len(), 1);
}

#[test]
fn unreadable_stored_state_starts_afresh() {
    let mut plugin = started("1000", "0");
    mock::set_kv("state", b"{not json");
    meter(&mut plugin, 7);
    assert!(mock::logged(Level::Error, "starting afresh"));
    meter(&mut plugin, 9);
    mock::run_for(&mut plugin, HOUR); // the stored timer id was lost with the state: no bill
    plugin.on_start();
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(invoices()[0].1, Amount(2));
}
