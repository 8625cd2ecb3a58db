//! Load tool: paid service calls from one hub to another over loopback.
//!
//! Two hubs run in this process with their own stores and the real peer network (noise over
//! TCP on 127.0.0.1). `--concurrency` callers on the buyer each buy `weather` calls as fast as
//! they can; every call is a budget decision, a durable promise, a request-response round
//! trip, a durable accept and a verified receipt. Prints calls/s, p50/p99 latency, and the
//! ratio of calls/s to raw ed25519 verifications per second measured in the same run.
//!
//! `cargo run --release -p machinomy-tests --bin paid-calls -- --calls 20000 --concurrency 64`

#![allow(clippy::print_stdout)] // a command-line tool: its output is the point

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::Signer;
use machinomy_core::{Amount, Budget, Period, SigningKey, Subject};
use machinomy_hub::config::{SellSettings, ServiceAnswer};
use machinomy_hub::testing::{InProcessHub, loopback_p2p};

const PRICE: u128 = 1_000;

struct Args {
    calls: usize,
    concurrency: usize,
}

fn args() -> Result<Args> {
    let mut args = Args { calls: 20_000, concurrency: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value =
            || -> Result<usize> { it.next().context("a number after the flag")?.parse().context("a whole number") };
        match flag.as_str() {
            "--calls" => args.calls = value()?,
            "--concurrency" => args.concurrency = value()?,
            other => bail!("unknown argument {other:?} (use --calls N --concurrency N)"),
        }
    }
    if args.calls == 0 || args.concurrency == 0 {
        bail!("--calls and --concurrency must be more than 0");
    }
    Ok(args)
}

fn raw_verify_rate() -> f64 {
    let key = SigningKey::from_bytes(&[1; 32]);
    let message = [7u8; 32];
    let signature = key.sign(&message);
    let verifying = key.verifying_key();
    let iterations = 20_000u32;
    let start = Instant::now();
    for _ in 0..iterations {
        let _ = verifying.verify_strict(std::hint::black_box(&message), &signature);
    }
    f64::from(iterations) / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let seller_dir = tempfile::tempdir()?;
    let buyer_dir = tempfile::tempdir()?;
    let capacity = Amount::from_base_units(PRICE * 10_000);
    let weather = SellSettings {
        name: "weather".to_owned(),
        price: Amount::from_base_units(PRICE),
        description: "load test".to_owned(),
        answer: ServiceAnswer::Text("sunny".to_owned()),
    };
    let seller = InProcessHub::start(
        seller_dir.path(),
        SigningKey::from_bytes(&[2; 32]),
        vec![weather],
        &[],
        Amount::MAX,
        loopback_p2p(Vec::new(), capacity),
    )
    .await?;
    let subject: Subject = "plugin:load".parse()?;
    let budget = Budget::new(subject.clone(), Period::Day, Amount::MAX, Amount::from_base_units(PRICE))?;
    let buyer = InProcessHub::start(
        buyer_dir.path(),
        SigningKey::from_bytes(&[1; 32]),
        Vec::new(),
        &[budget],
        Amount::MAX,
        loopback_p2p(seller.addrs().await?, capacity),
    )
    .await?;
    let net = buyer.market.net().context("the buyer's network")?;
    net.dial(seller.addrs().await?.first().context("a seller address")?).await?;
    seller.market.announce().await?;
    // Warm up: the first call finds the seller and opens a channel.
    buyer.market.call("weather", Vec::new(), &subject).await?;

    let market = Arc::new(buyer.market.clone());
    let per_task = args.calls.div_ceil(args.concurrency);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let market = market.clone();
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let begun = Instant::now();
                market.call("weather", Vec::new(), &subject).await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.calls);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    let raw = raw_verify_rate();
    println!("paid calls: {} in {:.2}s with {} callers", latencies.len(), elapsed.as_secs_f64(), args.concurrency);
    println!("calls/s: {rate:.0}");
    println!("latency p50: {:.2} ms, p99: {:.2} ms", ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99)));
    println!("raw ed25519 verify_strict (one core): {raw:.0}/s");
    println!("ratio paid_calls/raw_verify = {:.3}", rate / raw);
    buyer.stop().await;
    seller.stop().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
