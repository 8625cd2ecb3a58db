use machinomy_core::{
    Amount, Approval, Budget, ChannelId, ChannelTerms, Direction, LedgerId, Period, PromiseBody, PublicKey,
    ReceiverChannel, SigningKey, SpendRequest, SpendingEntry, Subject, Timestamp,
};

use super::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn receiver_channel(id: u8) -> ReceiverChannel {
    ReceiverChannel::new(ChannelTerms {
        id: ChannelId::from_bytes([id; 32]),
        ledger: LedgerId::credit(),
        sender: PublicKey::from(key(1).verifying_key()),
        receiver: PublicKey::from(key(2).verifying_key()),
        capacity: Amount::from_base_units(1_000),
        settlement_period_secs: 3600,
        opened_at: Timestamp(10),
    })
}

fn entry(at: u64, amount: u128) -> SpendingEntry {
    SpendingEntry {
        at: Timestamp(at),
        direction: Direction::In,
        subject: "device:meter".parse().unwrap(),
        counterparty: "peer".to_owned(),
        amount: Amount::from_base_units(amount),
        memo: String::new(),
        channel: None,
        approval: None,
    }
}

fn approval(id: u64, created: u64) -> Approval {
    Approval::new(
        id,
        SpendRequest {
            subject: "device:fridge".parse().unwrap(),
            payee: "grocer".to_owned(),
            amount: Amount::from_base_units(5),
            memo: "milk".to_owned(),
            reference: format!("r{id}"),
            created_at: Timestamp(created),
        },
        Timestamp(created + 60),
    )
}

#[tokio::test]
async fn every_committed_record_is_there_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut channel = receiver_channel(7);
    let promise = PromiseBody {
        ledger: LedgerId::credit(),
        channel: channel.terms.id,
        amount: Amount::from_base_units(40),
        stream: None,
    }
    .sign(&key(1));
    channel.accept(promise.clone()).unwrap();
    let record = ChannelRecord::Receiver(channel);
    let budget = Budget::new(
        Subject::Device("fridge".into()),
        Period::Week,
        Amount::from_base_units(100),
        Amount::from_base_units(10),
    )
    .unwrap();
    let settlement = Settlement {
        channel: ChannelId::from_bytes([7; 32]),
        sender: PublicKey::from(key(1).verifying_key()),
        receiver: PublicKey::from(key(2).verifying_key()),
        amount: Amount::from_base_units(40),
        closed_at: Timestamp(99),
        settled_at: None,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write(&[
                Write::Channel(&record),
                Write::Budget(&budget),
                Write::Approval(&approval(1, 50)),
                Write::Spending(&entry(50, 40)),
                Write::Settlement(&settlement),
            ])
            .unwrap();
        store.commit().await.unwrap();
        store.close().await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let channels = store.channels().unwrap();
    let [ChannelRecord::Receiver(restored)] = channels.as_slice() else { panic!("one receiver channel expected") };
    assert_eq!(restored.best.as_ref(), Some(&promise));
    assert_eq!(restored.accepted(), Amount::from_base_units(40));
    assert_eq!(store.budgets().unwrap(), vec![budget]);
    assert_eq!(store.approvals().unwrap(), vec![approval(1, 50)]);
    assert_eq!(store.spending(None, None).unwrap(), vec![entry(50, 40)]);
    assert_eq!(store.settlements().unwrap(), vec![settlement]);
    assert_eq!(store.next_approval_id().unwrap(), 2);
}

#[tokio::test]
async fn concurrent_commits_share_flushes_and_all_survive() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10u64 {
                store.write(&[Write::Spending(&entry(u64::from(i) * 100 + round, 1))]).unwrap();
                store.commit().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    store.close().await.unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.spending(None, None).unwrap().len(), 640);
}

#[tokio::test]
async fn spending_reads_a_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for at in [10, 20, 30, 40] {
        store.write(&[Write::Spending(&entry(at, at.into()))]).unwrap();
    }
    store.commit().await.unwrap();
    let got: Vec<u64> =
        store.spending(Some(Timestamp(20)), Some(Timestamp(40))).unwrap().iter().map(|e| e.at.secs()).collect();
    assert_eq!(got, vec![20, 30]);
}

#[tokio::test]
async fn recent_spending_is_the_newest_first_whatever_the_ledgers_length() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Two payments in the same second keep their order of writing.
    for (at, amount) in [(10, 1), (30, 3), (20, 2), (30, 4)] {
        store.write(&[Write::Spending(&entry(at, amount))]).unwrap();
    }
    store.commit().await.unwrap();
    let got: Vec<(u64, u128)> =
        store.recent_spending(3).unwrap().iter().map(|e| (e.at.secs(), e.amount.base_units())).collect();
    assert_eq!(got, vec![(30, 4), (30, 3), (20, 2)]);
    assert_eq!(store.recent_spending(10).unwrap().len(), 4);
    assert!(store.recent_spending(0).unwrap().is_empty());
}

#[tokio::test]
async fn approvals_created_since_stops_at_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (id, created) in [(1, 100), (2, 200), (3, 300)] {
        store.write(&[Write::Approval(&approval(id, created))]).unwrap();
    }
    store.commit().await.unwrap();
    let ids: Vec<u64> = store.approvals_created_since(Timestamp(200)).unwrap().iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![2, 3]);
}

#[test]
fn a_second_hub_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn a_store_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(FORMAT_KEY, b"99".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Format { ref found, .. } if found == "99"), "{err}");
}

#[test]
fn a_corrupt_record_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.inner.books.insert(key_bytes(BUDGET, b"device:x"), b"{not json".as_slice()).unwrap();
    let err = store.budgets().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

fn key_bytes(kind: u8, id: &[u8]) -> Vec<u8> {
    super::key(kind, id)
}

#[tokio::test]
async fn commits_after_close_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.commit().await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn batches_left_in_the_log_are_replayed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.close().await.unwrap();
    }
    // As if the hub died after syncing the log but before sled persisted the batch.
    let budget = Budget::new(
        Subject::Device("oven".into()),
        Period::Day,
        Amount::from_base_units(9),
        Amount::from_base_units(1),
    )
    .unwrap();
    {
        let (mut wal, pending) = wal::Wal::open(&dir.path().join(WAL_FILE)).unwrap();
        assert!(pending.is_empty(), "a clean close leaves an empty log");
        wal.append(&[(key_bytes(BUDGET, b"device:oven"), serde_json::to_vec(&budget).unwrap())]);
        wal.sync().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.budgets().unwrap(), vec![budget.clone()]);
    assert_eq!(std::fs::metadata(dir.path().join(WAL_FILE)).unwrap().len(), 0, "replayed then checkpointed");
    store.close().await.unwrap();
    drop(store);
    // A removal left in the log is replayed too.
    {
        let (mut wal, _) = wal::Wal::open(&dir.path().join(WAL_FILE)).unwrap();
        wal.append(&[(key_bytes(BUDGET, b"device:oven"), Vec::new())]);
        wal.sync().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.budgets().unwrap().is_empty());
}

#[tokio::test]
async fn a_removed_budget_is_gone_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let oven = Subject::Device("oven".into());
    let budget =
        Budget::new(oven.clone(), Period::Day, Amount::from_base_units(9), Amount::from_base_units(1)).unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.write(&[Write::Budget(&budget)]).unwrap();
        store.commit().await.unwrap();
        assert_eq!(store.budget(&oven).unwrap(), Some(budget));
        store.write(&[Write::RemoveBudget(&oven)]).unwrap();
        store.commit().await.unwrap();
        assert_eq!(store.budget(&oven).unwrap(), None);
        store.close().await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.budgets().unwrap().is_empty());
}

#[tokio::test]
async fn plugin_storage_is_logged_when_written_and_replayed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.plugin_kv_set("meter", b"billed", b"1200").unwrap();
        store.plugin_kv_set("meter", b"gone", b"x").unwrap();
        assert_eq!(store.plugin_kv_delete("meter", b"gone").unwrap(), Some(1));
        // Visible at once, before any commit: a plugin reads its own writes.
        assert_eq!(store.plugin_kv_get("meter", b"billed").unwrap(), Some(b"1200".to_vec()));
        store.commit().await.unwrap();
        // The commit made them durable in the log, not only in sled's memory.
        let (_, logged) = wal::Wal::open(&dir.path().join(WAL_FILE)).unwrap();
        let entries: Vec<&(Vec<u8>, Vec<u8>)> = logged.iter().flatten().collect();
        assert!(entries.iter().any(|(k, v)| k.ends_with(b"meter\0billed") && v == b"\x011200"), "{entries:?}");
        assert!(entries.iter().any(|(k, v)| k.ends_with(b"meter\0gone") && v == b"\x00"), "{entries:?}");
        store.close().await.unwrap();
    }
    // As if the hub died after syncing the log but before sled persisted the plugin's writes.
    {
        let (mut wal, _) = wal::Wal::open(&dir.path().join(WAL_FILE)).unwrap();
        let logged = |key: &[u8]| [&[PLUGIN_KV_LOGGED][..], b"meter\0", key].concat();
        wal.append(&[(logged(b"billed"), b"\x011500".to_vec()), (logged(b"new"), b"\x01y".to_vec())]);
        wal.append(&[(logged(b"new"), vec![0])]);
        wal.sync().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.plugin_kv_get("meter", b"billed").unwrap(), Some(b"1500".to_vec()));
    assert_eq!(store.plugin_kv_get("meter", b"new").unwrap(), None, "deleted again in a later batch");
    assert_eq!(store.plugin_kv_usage("meter").unwrap(), 10);
    assert!(store.budgets().unwrap().is_empty(), "nothing of the plugin's reached the books");
}

#[tokio::test]
async fn writes_become_visible_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let budget = Budget::new(
        Subject::Device("oven".into()),
        Period::Day,
        Amount::from_base_units(9),
        Amount::from_base_units(1),
    )
    .unwrap();
    store.write(&[Write::Budget(&budget)]).unwrap();
    store.commit().await.unwrap();
    assert_eq!(store.budget(&budget.subject).unwrap(), Some(budget));
}
