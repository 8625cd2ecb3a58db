//! Channels seeded into the books, seen and closed through the CLI, and the spending report.

use machinomy_core::{Amount, ChannelStatus, Subject, Timestamp};
use machinomy_tests::{TestHub, now, seed_receiver_channel};
use machinomy_web::model::{ChannelView, HubStatus, Role, SpendingReport};

const USD: u128 = 1_000_000_000;

#[tokio::test]
async fn accepted_promises_show_in_channels_and_spending_and_a_channel_closes_once() {
    let mut hub = TestHub::new().unwrap();
    hub.cli(&["init"]).await.unwrap().ok().unwrap();

    let seeded_at = now();
    let increments = [1_000_000_001, 250_000_000, 7].map(Amount::from_base_units);
    let subject: Subject = "device:solar-roof".parse().unwrap();
    let capacity = Amount::from_base_units(5 * USD);
    let channel = hub
        .with_books(async |books| seed_receiver_channel(books, capacity, &increments, &subject, "power").await)
        .await
        .unwrap();
    let total = Amount::from_base_units(1_250_000_008);
    assert_eq!(channel.total, total);
    let id = channel.id.to_hex();
    let sender = channel.sender.verifying_key();
    let sender = hex::encode(sender.as_bytes());

    hub.start().await.unwrap();
    let list: Vec<ChannelView> = hub.cli(&["channel", "list", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let view = &list[0];
    assert_eq!(view.id.to_hex(), id);
    assert_eq!(view.role, Role::Receiver);
    assert_eq!(view.counterparty.to_hex(), sender);
    assert_eq!(view.spent, total);
    assert_eq!(view.capacity, Amount::from_base_units(5 * USD));
    assert_eq!(view.remaining, Amount::from_base_units(5 * USD - 1_250_000_008));
    assert_eq!(view.status, ChannelStatus::Open);

    let shown = hub.cli(&["channel", "show", &id]).await.unwrap();
    let text = shown.ok().unwrap();
    assert!(text.contains("spent         1.250000008 USD"), "{text}");
    assert!(text.contains("status        open"), "{text}");
    let table = hub.cli(&["channel", "list"]).await.unwrap();
    assert!(table.ok().unwrap().contains(&id), "{table}");

    // The spending report agrees to the base unit, as JSON and as CSV.
    let by_payee: SpendingReport = hub.cli(&["spending", "--by", "payee", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(by_payee.rows.len(), 1, "{by_payee:?}");
    assert_eq!(by_payee.rows[0].key, sender);
    assert_eq!(by_payee.rows[0].received, total);
    assert_eq!(by_payee.rows[0].paid, Amount::ZERO);
    assert_eq!(by_payee.rows[0].payments, 3);
    assert_eq!(by_payee.total_received, total);

    let csv = hub.cli(&["spending", "--by", "payee", "--csv"]).await.unwrap();
    let csv = csv.ok().unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["key,paid,received,payments,currency", &format!("{sender},0,1.250000008,3,USD")], "{csv:?}");
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(Amount::parse_decimal(fields[2], 9).unwrap(), total);

    let by_subject: SpendingReport = hub.cli(&["spending", "--by", "subject", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(by_subject.rows.len(), 1);
    assert_eq!(by_subject.rows[0].key, "device:solar-roof");
    assert_eq!(by_subject.rows[0].received, total);

    // --from is inclusive and --to exclusive, both whole UTC days.
    let day = seeded_at.date_string();
    let day_before = Timestamp(seeded_at.secs() - 86_400).date_string();
    let from: SpendingReport = hub.cli(&["spending", "--from", &day, "--json"]).await.unwrap().json().unwrap();
    assert_eq!(from.total_received, total);
    let to: SpendingReport = hub.cli(&["spending", "--to", &day_before, "--json"]).await.unwrap().json().unwrap();
    assert!(to.rows.is_empty(), "{to:?}");

    // Close: recorded with its final amount, once.
    let closed: ChannelView = hub.cli(&["channel", "close", &id, "--json"]).await.unwrap().json().unwrap();
    match closed.status {
        ChannelStatus::Closing { final_amount, .. } => assert_eq!(final_amount, total),
        other => panic!("after close: {other:?}"),
    }
    let status: HubStatus = hub.cli(&["status", "--json"]).await.unwrap().json().unwrap();
    assert_eq!(status.channels_open, 0);

    let twice = hub.cli(&["channel", "close", &id]).await.unwrap();
    let line = twice.error_line().unwrap();
    assert!(line.contains("not open"), "{line}");

    // And it stays closed across a restart.
    assert!(hub.stop().await.unwrap().success());
    hub.start().await.unwrap();
    let view: ChannelView = hub.cli(&["channel", "show", &id, "--json"]).await.unwrap().json().unwrap();
    assert!(matches!(view.status, ChannelStatus::Closing { final_amount, .. } if final_amount == total), "{view:?}");
    assert_eq!(view.spent, total);
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn unknown_and_malformed_channel_ids_are_clear_errors() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let unknown = "ab".repeat(32);
    for args in [["channel", "show", unknown.as_str()], ["channel", "close", unknown.as_str()]] {
        let out = hub.cli(&args).await.unwrap();
        assert!(out.error_line().unwrap().contains("no channel"), "{out}");
    }
    let out = hub.cli(&["channel", "show", "xyz"]).await.unwrap();
    assert!(out.error_line().unwrap().contains("not a channel id"), "{out}");
    assert!(hub.stop().await.unwrap().success());
}
