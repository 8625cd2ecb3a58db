use machinomy_sdk::log::Level;
use machinomy_sdk::mock::{self, Import, Request};
use machinomy_sdk::Error;

use super::*;

const MANIFEST: &str = include_str!("../plugin.toml");
const GROCER: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const FRIDGE: &str = "machinomy/fridge/state";

/// The shipped manifest with the test grocer, a small diet and simple prices; not started.
fn setup(max_order: &str) -> GroceryOrdering {
    mock::reset();
    mock::load_manifest(MANIFEST).unwrap();
    mock::set_config_value("grocer", GROCER);
    mock::set_config_value("diet", Value::object().with("milk", 2u8).with("eggs", 12u8));
    mock::set_config_value("prices", Value::object().with("milk", "100").with("eggs", "10"));
    mock::set_config_value("max_order", max_order);
    GroceryOrdering::default()
}

fn fridge(plugin: &mut GroceryOrdering, inventory: &str) {
    plugin.on_message(FRIDGE, format!(r#"{{"inventory":{inventory}}}"#).as_bytes());
}

/// The spends since the last call: (request, amount, memo).
fn spends() -> Vec<(RequestId, Amount, String)> {
    mock::take_requests()
        .into_iter()
        .map(|r| match r {
            Request::Spend { id, payee, amount, memo } => {
                assert_eq!(payee, GROCER);
                (id, amount, memo)
            }
            other => panic!("not a spend: {other:?}"),
        })
        .collect()
}

/// The messages published since the last call on `topic`, as text.
fn published(topic: &str) -> Vec<String> {
    mock::take_published().into_iter().filter(|p| p.topic == topic).map(|p| p.text()).collect()
}

#[test]
fn start_subscribes_to_the_fridge_and_publishes_the_empty_list() {
    let mut plugin = setup("100000");
    plugin.on_start();
    assert_eq!(mock::subscriptions(), [FRIDGE]);
    let list = mock::last_published(LIST_TOPIC).unwrap();
    assert!(list.retain);
    assert_eq!(list.text(), r#"{"items":{}}"#);
    assert!(mock::requests().is_empty());
}

#[test]
fn a_report_short_of_the_diet_orders_what_is_missing() {
    let mut plugin = setup("100000");
    mock::set_config_value("diet", Value::object().with("milk", 2u8).with("eggs", 12u8).with("salt", 1u8));
    plugin.on_start();
    mock::take_published();
    fridge(&mut plugin, r#"{"milk":1,"eggs":4,"salt":0,"cake":3}"#);

    let sent = mock::take_published();
    assert_eq!(sent[0].topic, LIST_TOPIC);
    assert!(sent[0].retain);
    assert_eq!(sent[0].text(), r#"{"items":{"eggs":8,"milk":1,"salt":1}}"#);
    // Salt has no price: skipped, with a warning.
    assert_eq!(spends(), [(RequestId(1), Amount(8 * 10 + 100), "order 1: eggs×8, milk×1".to_string())]);
    assert!(mock::logged(Level::Warn, "no price for salt"));
    assert_eq!(sent[1].topic, ORDER_TOPIC);
    assert!(!sent[1].retain);
    assert_eq!(sent[1].text(), r#"{"order":1,"items":{"eggs":8,"milk":1},"amount":"180","status":"requested"}"#);
}

#[test]
fn a_big_order_waits_for_the_owner_and_is_not_placed_twice() {
    let mut plugin = setup("100000");
    fridge(&mut plugin, r#"{"milk":0,"eggs":12}"#);
    let (request, amount, _) = spends()[0].clone();
    assert_eq!(amount, Amount(200));
    mock::take_published();

    plugin.on_spend_result(request, SpendStatus::Pending, b"17");
    assert_eq!(published(ORDER_TOPIC), [r#"{"order":1,"items":{"milk":2},"amount":"200","status":"pending"}"#]);
    // More reports while the owner decides: the list follows the fridge, no second order.
    fridge(&mut plugin, r#"{"milk":0,"eggs":2}"#);
    assert!(spends().is_empty());
    assert_eq!(
        mock::last_published(LIST_TOPIC).map(|p| p.text()).as_deref(),
        Some(r#"{"items":{"eggs":10,"milk":2}}"#)
    );
    mock::take_published();

    plugin.on_spend_result(request, SpendStatus::Paid, b"");
    let sent = mock::take_published();
    assert_eq!(sent[0].text(), r#"{"order":1,"items":{"milk":2},"amount":"200","status":"paid"}"#);
    // The milk counts as delivered; the eggs wait for the next report.
    assert_eq!(sent[1].topic, LIST_TOPIC);
    assert_eq!(sent[1].text(), r#"{"items":{"eggs":10}}"#);
    assert!(spends().is_empty());

    fridge(&mut plugin, r#"{"milk":2,"eggs":2}"#);
    assert_eq!(spends(), [(RequestId(2), Amount(100), "order 2: eggs×10".to_string())]);
}

#[test]
fn a_paid_order_is_not_repeated_before_the_fridge_reports() {
    let mut plugin = setup("100000");
    fridge(&mut plugin, r#"{"milk":1,"eggs":12}"#);
    let request = spends()[0].0;
    plugin.on_spend_result(request, SpendStatus::Paid, b"");
    assert_eq!(mock::last_published(LIST_TOPIC).map(|p| p.text()).as_deref(), Some(r#"{"items":{}}"#));
    // A restart orders nothing: the list is empty until the fridge reports.
    let mut restarted = GroceryOrdering::default();
    restarted.on_start();
    assert!(spends().is_empty());
    // The delivery arrived.
    fridge(&mut restarted, r#"{"milk":2,"eggs":12}"#);
    assert!(spends().is_empty());
}

#[test]
fn orders_over_max_order_are_cut_down_item_by_item() {
    // 150 fits 8 eggs (80) but not the milk (100): what is left waits on the list.
    let mut plugin = setup("150");
    fridge(&mut plugin, r#"{"milk":0,"eggs":4}"#);
    assert_eq!(spends(), [(RequestId(1), Amount(80), "order 1: eggs×8".to_string())]);
    assert!(mock::logged(Level::Warn, "milk does not fit max_order"));

    // 35 fits three of the eggs.
    let mut plugin = setup("35");
    fridge(&mut plugin, r#"{"milk":2,"eggs":4}"#);
    assert_eq!(spends(), [(RequestId(1), Amount(30), "order 1: eggs×3".to_string())]);
    assert!(mock::logged(Level::Info, "ordering 3 of 8 eggs"));

    // Nothing fits: no order at all.
    let mut plugin = setup("5");
    fridge(&mut plugin, r#"{"milk":0,"eggs":0}"#);
    assert!(spends().is_empty());
}

#[test]
fn a_denied_list_is_not_ordered_again_until_it_changes() {
    let mut plugin = setup("100000");
    fridge(&mut plugin, r#"{"milk":1,"eggs":12}"#);
    let request = spends()[0].0;
    mock::take_published();
    plugin.on_spend_result(request, SpendStatus::Denied, b"owner said no");
    assert_eq!(published(ORDER_TOPIC), [r#"{"order":1,"items":{"milk":1},"amount":"100","status":"denied"}"#]);
    assert!(mock::logged(Level::Warn, "owner said no"));

    fridge(&mut plugin, r#"{"milk":1,"eggs":12}"#);
    assert!(spends().is_empty(), "the same list is not asked for again");
    fridge(&mut plugin, r#"{"milk":0,"eggs":12}"#);
    assert_eq!(spends(), [(RequestId(2), Amount(200), "order 2: milk×2".to_string())]);
    plugin.on_spend_result(RequestId(2), SpendStatus::Failed, b"grocer offline");

    // A restart tries the refused list again.
    plugin.on_start();
    assert_eq!(spends(), [(RequestId(3), Amount(200), "order 3: milk×2".to_string())]);
}

#[test]
fn nothing_is_ordered_without_a_grocer_but_the_list_is_kept() {
    let mut plugin = setup("100000");
    mock::set_config_value("grocer", "");
    fridge(&mut plugin, r#"{"milk":0}"#);
    assert!(spends().is_empty());
    assert!(mock::logged(Level::Error, "grocer is empty"));
    assert_eq!(
        mock::last_published(LIST_TOPIC).map(|p| p.text()).as_deref(),
        Some(r#"{"items":{"eggs":12,"milk":2}}"#)
    );
}

#[test]
fn a_spend_the_hub_refuses_is_tried_at_the_next_report() {
    let mut plugin = setup("100000");
    mock::fail_next(Import::Spend, Error::Busy);
    fridge(&mut plugin, r#"{"milk":1,"eggs":12}"#);
    assert!(spends().is_empty());
    assert!(mock::logged(Level::Error, "cannot pay the grocer"));
    fridge(&mut plugin, r#"{"milk":1,"eggs":12}"#);
    assert_eq!(spends(), [(RequestId(1), Amount(100), "order 1: milk×1".to_string())]);
}

#[test]
fn the_list_is_published_only_when_it_changes() {
    let mut plugin = setup("100000");
    mock::set_config_value("grocer", "");
    fridge(&mut plugin, r#"{"milk":1,"eggs":12}"#);
    fridge(&mut plugin, r#"{"milk":1,"eggs":12,"cake":1}"#);
    assert_eq!(published(LIST_TOPIC).len(), 1);
    fridge(&mut plugin, r#"{"milk":2,"eggs":12}"#);
    assert_eq!(published(LIST_TOPIC), [r#"{"items":{}}"#]);
}

#[test]
fn malformed_fridge_reports_are_ignored() {
    let mut plugin = setup("100000");
    for payload in ["", "nope", "[]", "{}", r#"{"inventory":[1]}"#, r#"{"inventory":"full"}"#] {
        plugin.on_message(FRIDGE, payload.as_bytes());
    }
    assert!(mock::requests().is_empty());
    assert!(mock::published().is_empty());
    assert_eq!(mock::logs().iter().filter(|l| l.level == Level::Warn).count(), 6);

    // An item reported as something other than a count is left alone; the rest is ordered.
    fridge(&mut plugin, r#"{"milk":"lots","eggs":-1}"#);
    assert!(spends().is_empty(), "nothing readable is missing");
    fridge(&mut plugin, r#"{"milk":"lots","eggs":11}"#);
    assert_eq!(spends(), [(RequestId(1), Amount(10), "order 1: eggs×1".to_string())]);
}

#[test]
fn bad_config_values_are_reported() {
    let mut plugin = setup("a lot");
    mock::set_config_value("diet", Value::object().with("milk", "two").with("eggs", 12u8));
    mock::set_config_value("prices", Value::object().with("eggs", "1.5"));
    fridge(&mut plugin, r#"{"eggs":0}"#);
    assert!(spends().is_empty());
    assert!(mock::logged(Level::Warn, "minimum of milk"));
    assert!(mock::logged(Level::Warn, "price of eggs"));
    assert!(mock::logged(Level::Error, "max_order"));
}

#[test]
fn an_open_order_survives_a_new_instance() {
    let mut plugin = setup("100000");
    fridge(&mut plugin, r#"{"milk":1,"eggs":12}"#);
    let request = spends()[0].0;
    drop(plugin);
    let mut fresh = GroceryOrdering::default();
    fridge(&mut fresh, r#"{"milk":1,"eggs":12}"#);
    assert!(spends().is_empty(), "the order is still open");
    fresh.on_spend_result(request, SpendStatus::Paid, b"");
    assert_eq!(
        mock::last_published(ORDER_TOPIC).map(|p| p.text()).as_deref(),
        Some(r#"{"order":1,"items":{"milk":1},"amount":"100","status":"paid"}"#)
    );
    // Answers for requests that are not the open order change nothing.
    mock::take_published();
    fresh.on_spend_result(request, SpendStatus::Denied, b"");
    fresh.on_spend_result(RequestId(42), SpendStatus::Paid, b"");
    assert!(mock::published().is_empty());
}

#[test]
fn the_shipped_manifest_orders_within_its_own_budget() {
    mock::reset();
    mock::load_manifest(MANIFEST).unwrap();
    mock::set_config_value("grocer", GROCER);
    let grants = mock::grants().unwrap();
    let budget = grants.budget.unwrap();
    let mut plugin = GroceryOrdering::default();
    plugin.on_start();
    fridge(&mut plugin, r#"{"milk":0,"eggs":0,"butter":0}"#);
    let (_, amount, memo) = spends()[0].clone();
    assert_eq!(memo, "order 1: butter×1, eggs×12, milk×2");
    assert_eq!(amount, Amount(2_500_000_000 + 12 * 350_000_000 + 2 * 1_200_000_000));
    assert!(amount <= budget.auto_approve);
}
