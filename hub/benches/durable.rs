//! Durable promise accepts (verify + state + sled write + group-commit fsync) per second with
//! 1, 8 and 64 channels accepting concurrently, against raw ed25519 verification measured in the
//! same run. Prints `ratio durable_accepts_64/raw_verify = …` lines; goal ≥ 0.7 at 64 channels.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark stops at the first failure

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use ed25519_dalek::{Signer, SigningKey};
use machinomy_core::{Amount, ChannelId, Currency, Promise, PromiseBody, PublicKey, Timestamp};
use machinomy_hub::ledger::{CreditLedger, Proposal};
use machinomy_hub::payments::{IncomingMeta, PaymentSettings, Payments};
use machinomy_hub::store::Store;

const NOW: Timestamp = Timestamp(1_800_000_000);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

struct Setup {
    _dir: tempfile::TempDir,
    books: Payments,
    /// Per channel, promises of increasing amounts, ready to accept in order.
    promises: Vec<Vec<Promise>>,
}

async fn setup(channels: usize, per_channel: usize) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let me = SigningKey::from_bytes(&[2; 32]);
    let store = Store::open(dir.path()).expect("store");
    let ledger = Arc::new(CreditLedger::new(PublicKey::from(me.verifying_key()), Currency::usd(), Amount::MAX, 0));
    let settings =
        PaymentSettings { approval_ttl_secs: 60, max_pending_approvals: 10, time_zone: jiff::tz::TimeZone::UTC };
    let books = Payments::open(store, me, ledger, settings, &[]).await.expect("books");
    let sender = SigningKey::from_bytes(&[1; 32]);
    let mut promises = Vec::new();
    for c in 0..channels {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(c as u64).to_be_bytes());
        let channel = ChannelId::from_bytes(id);
        let proposal = Proposal {
            channel,
            sender: PublicKey::from(sender.verifying_key()),
            capacity: Amount::from_base_units(1 << 60),
            settlement_period_secs: 0,
        };
        let terms = books.accept_proposal(&proposal, NOW).await.expect("open");
        promises.push(
            (1..=per_channel as u128)
                .map(|n| {
                    PromiseBody {
                        ledger: terms.ledger.clone(),
                        channel,
                        amount: Amount::from_base_units(n),
                        stream: None,
                    }
                    .sign(&sender)
                })
                .collect(),
        );
    }
    Setup { _dir: dir, books, promises }
}

/// Accepts every prepared promise, one task per channel; returns the elapsed time.
async fn accept_all(setup: &mut Setup) -> Duration {
    let meta = Arc::new(IncomingMeta { subject: "device:bench".parse().expect("subject"), memo: String::new() });
    let start = Instant::now();
    let tasks: Vec<_> = std::mem::take(&mut setup.promises)
        .into_iter()
        .map(|promises| {
            let books = setup.books.clone();
            let meta = meta.clone();
            tokio::spawn(async move {
                for promise in promises {
                    books.accept(promise, &meta, NOW).await.expect("accept");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    start.elapsed()
}

/// This process's bytes written to storage so far (Linux `/proc/self/io`), 0 where unknown.
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn raw_verify_rate(iterations: u32) -> f64 {
    let key = SigningKey::from_bytes(&[1; 32]);
    let message = [7u8; 32];
    let signature = key.sign(&message);
    let verifying = key.verifying_key();
    let start = Instant::now();
    for _ in 0..iterations {
        verifying.verify_strict(std::hint::black_box(&message), &signature).expect("verify");
    }
    f64::from(iterations) / start.elapsed().as_secs_f64()
}

fn durable_rate(rt: &tokio::runtime::Runtime, channels: usize, total: usize) -> f64 {
    let per_channel = (total / channels).max(1);
    let mut setup = rt.block_on(setup(channels, per_channel));
    let elapsed = rt.block_on(accept_all(&mut setup));
    (channels * per_channel) as f64 / elapsed.as_secs_f64()
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let key = SigningKey::from_bytes(&[1; 32]);
    let signature = key.sign(&[7u8; 32]);
    let verifying = key.verifying_key();
    c.bench_function("raw_ed25519_verify_strict", |b| {
        b.iter(|| verifying.verify_strict(std::hint::black_box(&[7u8; 32]), &signature))
    });
    let mut group = c.benchmark_group("durable_accept");
    group.sample_size(10);
    for channels in [1usize, 8, 64] {
        group.bench_function(format!("{channels}_channels"), |b| {
            b.iter_custom(|iters| {
                let mut setup = rt.block_on(setup(channels, (iters as usize).div_ceil(channels)));
                rt.block_on(accept_all(&mut setup))
            })
        });
    }
    group.finish();
}

criterion_group!(durable, benches);

fn main() {
    durable();
    // `cargo test` runs benches once without `--bench`: keep that quick and skip the summary.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = runtime();
    let raw = raw_verify_rate(20_000);
    eprintln!("raw ed25519 verify_strict: {raw:.0}/s (one core)");
    for channels in [1usize, 8, 64] {
        let total = if channels == 1 { 2_000 } else { 40_000 };
        let written_before = bytes_written();
        let rate = durable_rate(&rt, channels, total);
        let written = bytes_written().saturating_sub(written_before);
        eprintln!("durable accepts, {channels} channels: {} bytes written to disk per accept", written / total as u64);
        eprintln!("durable accepts, {channels} channels: {rate:.0}/s");
        eprintln!("ratio durable_accepts_{channels}/raw_verify = {:.2}", rate / raw);
    }
    Criterion::default().configure_from_args().final_summary();
}
