use machinomy_sdk::log::Level;
use machinomy_sdk::mock::{self, Import, Request};
use machinomy_sdk::Error;

use super::*;

const MANIFEST: &str = include_str!("../plugin.toml");
const HOUR: u64 = 3_600_000;
const PAUSE: &str = "machinomy/irrigation/cmd/pause";
const RESUME: &str = "machinomy/irrigation/cmd/resume";

/// A plugin started with the shipped manifest.
fn started() -> WeatherBuyer {
    mock::reset();
    mock::load_manifest(MANIFEST).unwrap();
    let mut plugin = WeatherBuyer::default();
    plugin.on_start();
    plugin
}

/// The forecast purchases since the last call.
fn purchases() -> Vec<RequestId> {
    mock::take_requests()
        .into_iter()
        .map(|r| match r {
            Request::CallService { id, service, body, max_price } => {
                assert_eq!(
                    (service.as_str(), body.as_slice(), max_price),
                    ("weather.forecast", &b"{}"[..], Amount(2000))
                );
                id
            }
            other => panic!("not a service call: {other:?}"),
        })
        .collect()
}

/// The commands published since the last call: (topic, payload).
fn commands() -> Vec<(String, String)> {
    mock::take_published()
        .into_iter()
        .map(|p| {
            assert!(!p.retain);
            (p.topic.clone(), p.text())
        })
        .collect()
}

/// Buys (at the next tick) and answers with a forecast of `rain` percent.
fn forecast(plugin: &mut WeatherBuyer, rain: &str) {
    mock::run_for(plugin, HOUR);
    let request = purchases()[0];
    let answer = format!(r#"{{"rain_probability": {rain}, "temperature_c": 12.5}}"#);
    plugin.on_spend_result(request, SpendStatus::Paid, answer.as_bytes());
}

#[test]
fn start_sets_an_hourly_timer_and_buys_at_once() {
    let _plugin = started();
    let timers = mock::timers();
    assert_eq!(timers.len(), 1);
    assert_eq!((timers[0].delay_ms, timers[0].repeat), (HOUR, true));
    assert_eq!(purchases(), [RequestId(1)]);
}

#[test]
fn rain_pauses_the_irrigation_and_dry_weather_resumes_it() {
    let mut plugin = started();
    plugin.on_spend_result(purchases()[0], SpendStatus::Paid, br#"{"rain_probability": 80, "temperature_c": 12.5}"#);
    assert_eq!(commands(), [(PAUSE.to_string(), r#"{"reason":"rain","rain_probability":80}"#.to_string())]);

    forecast(&mut plugin, "85");
    assert!(commands().is_empty(), "still raining: no new command");

    forecast(&mut plugin, "20");
    assert_eq!(commands(), [(RESUME.to_string(), "{}".to_string())]);
    forecast(&mut plugin, "59.5");
    assert!(commands().is_empty());

    // The threshold itself is rain.
    forecast(&mut plugin, "60");
    assert_eq!(commands(), [(PAUSE.to_string(), r#"{"reason":"rain","rain_probability":60}"#.to_string())]);
    forecast(&mut plugin, "72.5");
    assert!(commands().is_empty());
}

#[test]
fn the_first_dry_forecast_resumes() {
    let mut plugin = started();
    plugin.on_spend_result(purchases()[0], SpendStatus::Paid, br#"{"rain_probability": 0}"#);
    assert_eq!(commands(), [(RESUME.to_string(), "{}".to_string())]);
}

#[test]
fn denied_and_failed_purchases_change_nothing_and_are_tried_next_tick() {
    let mut plugin = started();
    plugin.on_spend_result(purchases()[0], SpendStatus::Denied, b"over budget");
    assert!(mock::logged(Level::Warn, "over budget"));
    mock::run_for(&mut plugin, HOUR);
    let again = purchases();
    assert_eq!(again.len(), 1);
    plugin.on_spend_result(again[0], SpendStatus::Failed, b"no seller");
    assert!(commands().is_empty());
    forecast(&mut plugin, "90");
    assert_eq!(commands().len(), 1);
}

#[test]
fn one_purchase_at_a_time() {
    let mut plugin = started();
    let first = purchases()[0];
    // A restart right after buying does not buy again.
    plugin.on_start();
    assert!(purchases().is_empty());

    // Waiting for the owner holds back the ticks (for up to a day).
    plugin.on_spend_result(first, SpendStatus::Pending, b"5");
    mock::run_for(&mut plugin, 3 * HOUR);
    assert!(purchases().is_empty());
    plugin.on_spend_result(first, SpendStatus::Paid, br#"{"rain_probability": 10}"#);
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(purchases().len(), 1);
}

#[test]
fn an_unanswered_purchase_is_replaced_after_a_period() {
    let mut plugin = started();
    let lost = purchases()[0];
    mock::run_for(&mut plugin, HOUR);
    let next = purchases();
    assert_eq!(next.len(), 1);
    assert!(mock::logged(Level::Warn, "got no answer"));
    // The late answer to the lost purchase is ignored; the current one counts.
    plugin.on_spend_result(lost, SpendStatus::Paid, br#"{"rain_probability": 99}"#);
    assert!(commands().is_empty());
    plugin.on_spend_result(next[0], SpendStatus::Paid, br#"{"rain_probability": 99}"#);
    assert_eq!(commands().len(), 1);
}

#[test]
fn a_pending_purchase_is_given_up_after_a_day() {
    let mut plugin = started();
    plugin.on_spend_result(purchases()[0], SpendStatus::Pending, b"5");
    mock::run_for(&mut plugin, 23 * HOUR);
    assert!(purchases().is_empty());
    mock::run_for(&mut plugin, HOUR);
    assert_eq!(purchases().len(), 1);
}

#[test]
fn malformed_forecasts_are_ignored() {
    let mut plugin = started();
    let mut request = purchases()[0];
    for answer in ["", "rain!", "[80]", "{}", r#"{"rain_probability":"80"}"#, r#"{"rain_probability":null}"#] {
        plugin.on_spend_result(request, SpendStatus::Paid, answer.as_bytes());
        mock::run_for(&mut plugin, HOUR);
        request = purchases()[0];
    }
    assert!(commands().is_empty());
    assert_eq!(mock::logs().iter().filter(|l| l.level == Level::Warn).count(), 6);
    plugin.on_spend_result(request, SpendStatus::Paid, br#"{"rain_probability":70}"#);
    assert_eq!(commands().len(), 1);
}

#[test]
fn a_restart_replaces_the_timer_and_ignores_the_old_one() {
    let mut plugin = started();
    let old = mock::timers()[0].id;
    let request = purchases()[0];
    plugin.on_spend_result(request, SpendStatus::Paid, br#"{"rain_probability":70}"#);
    commands();
    mock::advance(HOUR);
    plugin.on_start();
    assert_eq!(mock::timers().len(), 1);
    assert_eq!(purchases().len(), 1, "buys at start");
    plugin.on_timer(old);
    assert!(purchases().is_empty());
}

#[test]
fn a_fresh_instance_finishes_the_purchase_and_remembers_the_decision() {
    let mut plugin = started();
    plugin.on_spend_result(purchases()[0], SpendStatus::Paid, br#"{"rain_probability":70}"#);
    commands();
    mock::run_for(&mut plugin, HOUR);
    let request = purchases()[0];
    drop(plugin);
    let mut fresh = WeatherBuyer::default();
    fresh.on_spend_result(request, SpendStatus::Paid, br#"{"rain_probability":75}"#);
    assert!(commands().is_empty(), "already paused");
}

#[test]
fn a_command_that_cannot_be_published_is_sent_next_time() {
    let mut plugin = started();
    mock::fail_next(Import::Publish, Error::Unavailable);
    plugin.on_spend_result(purchases()[0], SpendStatus::Paid, br#"{"rain_probability":70}"#);
    assert!(commands().is_empty());
    assert!(mock::logged(Level::Error, "cannot publish"));
    forecast(&mut plugin, "70");
    assert_eq!(commands().len(), 1);
}

#[test]
fn the_config_chooses_device_threshold_and_period() {
    mock::reset();
    mock::set_config(
        r#"{"irrigation":"garden","rain_threshold":30,"every_secs":600,"max_price":"50","service":"rain.now"}"#,
    );
    let mut plugin = WeatherBuyer::default();
    plugin.on_start();
    assert_eq!(mock::timers()[0].delay_ms, 600_000);
    let request = match mock::take_requests().as_slice() {
        [Request::CallService { id, service, max_price, .. }] => {
            assert_eq!((service.as_str(), *max_price), ("rain.now", Amount(50)));
            *id
        }
        other => panic!("{other:?}"),
    };
    plugin.on_spend_result(request, SpendStatus::Paid, br#"{"rain_probability":30}"#);
    assert_eq!(
        commands(),
        [("machinomy/garden/cmd/pause".to_string(), r#"{"reason":"rain","rain_probability":30}"#.to_string())]
    );
}

#[test]
fn nothing_is_bought_without_a_max_price() {
    mock::reset();
    mock::set_config(r#"{"max_price":"two"}"#);
    let mut plugin = WeatherBuyer::default();
    plugin.on_start();
    assert!(mock::requests().is_empty());
    assert!(mock::logged(Level::Error, "max_price"));
}
