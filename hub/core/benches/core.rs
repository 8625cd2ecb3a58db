//! Criterion benchmarks of the payment core, each next to its physical limit.
//!
//! Every group times the operation and the primitive it cannot beat (an ed25519 strict verify,
//! one BLAKE3 hash of 32 bytes), then times both again with `Instant` over the same inputs and
//! prints `ratio operation/limit = …`: how close the core comes to the cryptography it needs.
//! Under `cargo test` (no `--bench`) criterion runs each benchmark once and the ratio loops are
//! tiny, so the numbers printed there mean nothing; `cargo bench -p machinomy-core` prints real ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use machinomy_core::{
    Amount, ChannelId, ChannelTerms, HashChain, LedgerId, Promise, PromiseBody, PublicKey, ReceiverChannel,
    StreamTerms, StreamVerifier, Timestamp,
};

/// Whether criterion is really benchmarking (`cargo bench`) rather than smoke-testing.
fn bench_mode() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// Repetitions of each manual timing, the two sides interleaved; the fastest of each counts
/// (the run least disturbed by the machine).
fn reps() -> usize {
    if bench_mode() { 21 } else { 1 }
}

fn terms(sender: &SigningKey) -> ChannelTerms {
    ChannelTerms {
        id: ChannelId::from_bytes([7; 32]),
        ledger: LedgerId::credit(),
        sender: PublicKey::from(sender.verifying_key()),
        receiver: PublicKey::from(SigningKey::from_bytes(&[2; 32]).verifying_key()),
        capacity: Amount::MAX,
        settlement_period_secs: 3_600,
        opened_at: Timestamp(0),
    }
}

fn promise(sender: &SigningKey, amount: u128) -> Promise {
    PromiseBody {
        ledger: LedgerId::credit(),
        channel: ChannelId::from_bytes([7; 32]),
        amount: Amount::from_base_units(amount),
        stream: None,
    }
    .sign(sender)
}

/// Per-operation time of `n` operations that took `elapsed`.
fn per_op(elapsed: Duration, n: usize) -> Duration {
    elapsed / u32::try_from(n.max(1)).unwrap()
}

fn print_ratio(name: &str, limit: &str, op: Duration, raw: Duration, n: usize) {
    let ratio = op.as_secs_f64() / raw.as_secs_f64().max(f64::MIN_POSITIVE);
    println!("ratio {name}/{limit} = {ratio:.2} ({name} {op:?}/op, {limit} {raw:?}/op, best of {} x {n})", reps());
}

fn promises(c: &mut Criterion) {
    let sender = SigningKey::from_bytes(&[1; 32]);
    let terms = terms(&sender);
    let message = [0x5a_u8; 32];
    let raw_signature = sender.sign(&message);
    let verifying = sender.verifying_key();
    let one = promise(&sender, 1);

    let mut group = c.benchmark_group("promise");
    group.bench_function("raw_ed25519_verify_strict", |b| {
        b.iter(|| verifying.verify_strict(black_box(&message), black_box(&raw_signature)))
    });
    // The limit when the sender key is stored as bytes, as `ChannelTerms` stores it: the point
    // must be decompressed before every verify.
    let key_bytes = PublicKey::from(verifying);
    group.bench_function("raw_ed25519_decompress_and_verify_strict", |b| {
        b.iter(|| {
            black_box(&key_bytes).verifying_key().unwrap().verify_strict(black_box(&message), black_box(&raw_signature))
        })
    });
    group.bench_function("promise_accept", |b| {
        b.iter_batched(
            || (ReceiverChannel::new(terms.clone()), one.clone()),
            |(mut channel, promise)| {
                let acceptance = channel.accept(black_box(promise));
                (acceptance, channel)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The ratio, measured here over the same kind of input: a stream of increasing promises,
    // each verified and accepted on one channel, against bare strict verifies.
    let n = if bench_mode() { 300 } else { 4 };
    let signed: Vec<Promise> = (1..=n as u128).map(|amount| promise(&sender, amount)).collect();
    let mut raw_time = Duration::MAX;
    let mut decompress_time = Duration::MAX;
    let mut accept_time = Duration::MAX;
    for _ in 0..reps() {
        let start = Instant::now();
        for _ in 0..n {
            black_box(verifying.verify_strict(black_box(&message), black_box(&raw_signature))).unwrap();
        }
        raw_time = raw_time.min(per_op(start.elapsed(), n));
        let start = Instant::now();
        for _ in 0..n {
            let key = black_box(&key_bytes).verifying_key().unwrap();
            black_box(key.verify_strict(black_box(&message), black_box(&raw_signature))).unwrap();
        }
        decompress_time = decompress_time.min(per_op(start.elapsed(), n));
        let batch = signed.clone();
        let mut channel = ReceiverChannel::new(terms.clone());
        let start = Instant::now();
        for promise in batch {
            black_box(channel.accept(black_box(promise))).unwrap();
        }
        accept_time = accept_time.min(per_op(start.elapsed(), n));
        assert_eq!(channel.accepted(), Amount::from_base_units(n as u128));
    }
    print_ratio("promise_accept", "raw_ed25519_verify_strict", accept_time, raw_time, n);
    print_ratio("promise_accept", "raw_ed25519_decompress_and_verify_strict", accept_time, decompress_time, n);
}

fn ticks(c: &mut Criterion) {
    // A long chain, revealed tick by tick; verifiers are reset (outside the timing) when it ends.
    let len: u64 = if bench_mode() { 1 << 16 } else { 64 };
    let chain = HashChain::new([9; 32], len).unwrap();
    let preimages: Vec<[u8; 32]> = (1..=len).map(|i| chain.tick(i).unwrap().preimage).collect();
    let fresh = StreamVerifier::new(
        Amount::ZERO,
        StreamTerms { root: chain.root(), price_per_tick: Amount::from_base_units(1), max_ticks: len },
    );

    let verify_run = |iters: u64| {
        let mut total = Duration::ZERO;
        let mut remaining = iters;
        while remaining > 0 {
            let n = remaining.min(len);
            let mut verifier = fresh.clone();
            let start = Instant::now();
            for preimage in &preimages[..n as usize] {
                black_box(verifier.verify(black_box(preimage))).unwrap();
            }
            total += start.elapsed();
            remaining -= n;
        }
        total
    };
    let hash_run = |iters: u64| {
        let mut total = Duration::ZERO;
        let mut remaining = iters;
        while remaining > 0 {
            let n = remaining.min(len);
            let start = Instant::now();
            for preimage in &preimages[..n as usize] {
                black_box(blake3::hash(black_box(preimage)));
            }
            total += start.elapsed();
            remaining -= n;
        }
        total
    };

    let mut group = c.benchmark_group("tick");
    group.bench_function("raw_blake3_32_bytes", |b| b.iter_custom(hash_run));
    group.bench_function("stream_verify", |b| b.iter_custom(verify_run));
    group.finish();

    // Short runs (about a millisecond each), so that some of them miss every interruption.
    let per_rep = len.min(1 << 14);
    let n = per_rep as usize;
    let mut raw_time = Duration::MAX;
    let mut verify_time = Duration::MAX;
    for _ in 0..reps() {
        raw_time = raw_time.min(per_op(hash_run(per_rep), n));
        verify_time = verify_time.min(per_op(verify_run(per_rep), n));
    }
    print_ratio("stream_verify", "raw_blake3_32_bytes", verify_time, raw_time, n);
    let per_second = 1.0 / verify_time.as_secs_f64().max(f64::MIN_POSITIVE);
    println!("ticks/s per core = {:.2}M (goal >= 1M)", per_second / 1e6);
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = promises, ticks
}
criterion_main!(benches);
