use machinomy_sdk::log::Level;
use machinomy_sdk::mock::{self, Import, Request};

use super::*;

const MANIFEST: &str = include_str!("../plugin.toml");
const INSURER: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const EBIKE: &str = "machinomy/ebike/state";
const TICK: u64 = 1000;

/// A plugin started with the shipped manifest, the test insurer, a price of 5 and 1 s ticks.
fn started() -> MicroInsurance {
    mock::reset();
    mock::load_manifest(MANIFEST).unwrap();
    mock::set_config_value("insurer", INSURER);
    mock::set_config_value("price_per_minute", "5");
    mock::set_config_value("tick_ms", TICK);
    let mut plugin = MicroInsurance::default();
    plugin.on_start();
    plugin
}

fn use_bike(plugin: &mut MicroInsurance, in_use: bool) {
    plugin.on_message(EBIKE, format!(r#"{{"in_use":{in_use},"battery":80}}"#).as_bytes());
}

/// The ticks paid since the last call.
fn ticks() -> Vec<RequestId> {
    mock::take_requests()
        .into_iter()
        .map(|r| match r {
            Request::StreamTick { id, payee, price, memo } => {
                assert_eq!((payee.as_str(), price, memo.as_str()), (INSURER, Amount(5), "cover ebike"));
                id
            }
            other => panic!("not a tick: {other:?}"),
        })
        .collect()
}

/// The coverage messages since the last call, as text.
fn coverage() -> Vec<String> {
    mock::take_published()
        .into_iter()
        .map(|p| {
            assert_eq!(p.topic, COVERAGE_TOPIC);
            p.text()
        })
        .collect()
}

#[test]
fn nothing_happens_until_the_device_is_in_use() {
    let mut plugin = started();
    assert_eq!(mock::subscriptions(), [EBIKE]);
    assert!(mock::timers().is_empty());
    use_bike(&mut plugin, false);
    mock::run_for(&mut plugin, 10 * TICK);
    assert!(ticks().is_empty());
    assert!(coverage().is_empty());
}

#[test]
fn pays_a_tick_every_period_while_in_use() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":0,"paid":"0","status":"covered"}"#]);
    let timers = mock::timers();
    assert_eq!((timers.len(), timers[0].delay_ms, timers[0].repeat), (1, TICK, true));

    mock::run_for(&mut plugin, 3 * TICK);
    let sent = ticks();
    assert_eq!(sent, [RequestId(1), RequestId(2), RequestId(3)]);
    for request in sent {
        plugin.on_spend_result(request, SpendStatus::Paid, b"");
    }
    assert_eq!(
        coverage(),
        [
            r#"{"device":"ebike","in_use":true,"ticks_paid":1,"paid":"5","status":"covered"}"#,
            r#"{"device":"ebike","in_use":true,"ticks_paid":2,"paid":"10","status":"covered"}"#,
            r#"{"device":"ebike","in_use":true,"ticks_paid":3,"paid":"15","status":"covered"}"#,
        ]
    );
}

#[test]
fn stops_paying_when_the_device_is_put_away() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    mock::run_for(&mut plugin, 2 * TICK);
    let sent = ticks();
    plugin.on_spend_result(sent[0], SpendStatus::Paid, b"");
    coverage();

    use_bike(&mut plugin, false);
    assert!(mock::timers().is_empty());
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":false,"ticks_paid":1,"paid":"5","status":"idle"}"#]);
    mock::run_for(&mut plugin, 10 * TICK);
    assert!(ticks().is_empty());
    // The last tick's outcome still counts.
    plugin.on_spend_result(sent[1], SpendStatus::Paid, b"");
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":false,"ticks_paid":2,"paid":"10","status":"idle"}"#]);

    // The next use counts from zero.
    use_bike(&mut plugin, true);
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":0,"paid":"0","status":"covered"}"#]);
}

#[test]
fn more_reports_while_in_use_change_nothing() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    let timer = mock::timers()[0].id;
    mock::run_for(&mut plugin, TICK);
    plugin.on_spend_result(ticks()[0], SpendStatus::Paid, b"");
    coverage();
    use_bike(&mut plugin, true);
    use_bike(&mut plugin, true);
    assert_eq!(mock::timers().iter().map(|t| t.id).collect::<Vec<_>>(), [timer]);
    assert!(coverage().is_empty());
    mock::run_for(&mut plugin, TICK);
    plugin.on_spend_result(ticks()[0], SpendStatus::Paid, b"");
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":2,"paid":"10","status":"covered"}"#]);
}

#[test]
fn a_denied_tick_ends_cover_until_the_device_reports_again() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    mock::run_for(&mut plugin, TICK);
    coverage();
    plugin.on_spend_result(ticks()[0], SpendStatus::Denied, b"budget spent");
    assert!(mock::timers().is_empty());
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":0,"paid":"0","status":"uncovered"}"#]);
    assert!(mock::logged(Level::Warn, "budget spent"));
    mock::run_for(&mut plugin, 5 * TICK);
    assert!(ticks().is_empty());

    use_bike(&mut plugin, true);
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":0,"paid":"0","status":"covered"}"#]);
    mock::run_for(&mut plugin, TICK);
    assert_eq!(ticks().len(), 1);
}

#[test]
fn a_failed_tick_ends_cover_too() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    mock::run_for(&mut plugin, 2 * TICK);
    let sent = ticks();
    coverage();
    plugin.on_spend_result(sent[0], SpendStatus::Failed, b"insurer offline");
    plugin.on_spend_result(sent[1], SpendStatus::Failed, b"insurer offline"); // already ended: logged only
    assert_eq!(coverage().len(), 1);
    assert!(mock::timers().is_empty());
}

#[test]
fn a_pending_tick_is_published_and_cover_goes_on() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    mock::run_for(&mut plugin, TICK);
    let first = ticks()[0];
    coverage();
    plugin.on_spend_result(first, SpendStatus::Pending, b"3");
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":0,"paid":"0","status":"pending"}"#]);
    mock::run_for(&mut plugin, TICK);
    assert_eq!(ticks().len(), 1);
    plugin.on_spend_result(first, SpendStatus::Paid, b"");
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":1,"paid":"5","status":"covered"}"#]);
}

#[test]
fn a_busy_hub_skips_a_tick_and_a_refusal_ends_cover() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    coverage();
    mock::fail_next(Import::StreamTick, machinomy_sdk::Error::Busy);
    mock::run_for(&mut plugin, 2 * TICK);
    assert_eq!(ticks().len(), 1);
    assert_eq!(mock::timers().len(), 1);
    mock::fail_next(Import::StreamTick, machinomy_sdk::Error::NotGranted);
    mock::run_for(&mut plugin, TICK);
    assert!(mock::timers().is_empty());
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":0,"paid":"0","status":"uncovered"}"#]);
}

#[test]
fn no_cover_without_an_insurer() {
    let plugin = started();
    drop(plugin);
    mock::set_config_value("insurer", "");
    let mut plugin = MicroInsurance::default();
    use_bike(&mut plugin, true);
    assert!(mock::timers().is_empty());
    assert!(mock::logged(Level::Error, "insurer"));
    assert_eq!(coverage(), [r#"{"device":"ebike","in_use":true,"ticks_paid":0,"paid":"0","status":"uncovered"}"#]);
    mock::run_for(&mut plugin, 3 * TICK);
    assert!(mock::requests().is_empty());
}

#[test]
fn malformed_states_are_ignored() {
    let mut plugin = started();
    for payload in ["", "yes", "[]", "{}", r#"{"in_use":"true"}"#, r#"{"in_use":1}"#] {
        plugin.on_message(EBIKE, payload.as_bytes());
    }
    assert!(mock::timers().is_empty());
    assert!(coverage().is_empty());
    assert_eq!(mock::logs().iter().filter(|l| l.level == Level::Warn).count(), 6);
}

#[test]
fn a_restart_keeps_the_cover_with_a_new_timer() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    let old = mock::timers()[0].id;
    coverage();
    mock::set_device_state("ebike", r#"{"in_use":true}"#);
    plugin.on_start();
    let timers = mock::timers();
    assert_eq!(timers.len(), 1);
    assert_ne!(timers[0].id, old);
    plugin.on_timer(old);
    assert!(ticks().is_empty(), "the old timer is ignored");
    mock::run_for(&mut plugin, TICK);
    assert_eq!(ticks().len(), 1);

    // Restarted while the bike was put away: the registry's state stops the cover.
    mock::set_device_state("ebike", r#"{"in_use":false}"#);
    plugin.on_start();
    assert!(mock::timers().is_empty());
    assert_eq!(
        coverage().last().map(String::as_str),
        Some(r#"{"device":"ebike","in_use":false,"ticks_paid":0,"paid":"0","status":"idle"}"#)
    );
}

#[test]
fn the_device_state_at_start_starts_cover() {
    mock::reset();
    mock::load_manifest(MANIFEST).unwrap();
    mock::set_config_value("insurer", INSURER);
    mock::set_config_value("price_per_minute", "5");
    mock::set_device_state("ebike", r#"{"in_use":true}"#);
    let mut plugin = MicroInsurance::default();
    plugin.on_start();
    assert_eq!(mock::timers()[0].delay_ms, 60_000, "the shipped default: one tick a minute");
    mock::run_for(&mut plugin, 60_000);
    assert_eq!(ticks().len(), 1);
}

#[test]
fn a_fresh_instance_carries_on_from_kv() {
    let mut plugin = started();
    use_bike(&mut plugin, true);
    mock::run_for(&mut plugin, TICK);
    let first = ticks()[0];
    drop(plugin);
    let mut fresh = MicroInsurance::default();
    fresh.on_spend_result(first, SpendStatus::Paid, b"");
    mock::run_for(&mut fresh, TICK);
    assert_eq!(ticks().len(), 1);
    assert_eq!(
        coverage().last().map(String::as_str),
        Some(r#"{"device":"ebike","in_use":true,"ticks_paid":1,"paid":"5","status":"covered"}"#)
    );
    fresh.on_spend_result(RequestId(77), SpendStatus::Denied, b""); // not ours
    assert_eq!(mock::timers().len(), 1);
}
