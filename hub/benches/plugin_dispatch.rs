//! Messages dispatched into a plugin per second through the host (subscription match,
//! arguments copied into the guest, fuel set, `on_message` called, timers collected), against
//! a bare wasmtime call of the same export with its arguments already in memory, in the same
//! run. Prints `ratio …` and `overhead …` lines; goal ≤ 2 µs of overhead per event.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // a benchmark stops at the first failure

use std::time::Instant;

use criterion::{Criterion, criterion_group};
use machinomy_hub::plugin::Package;
use machinomy_hub::plugin::bench::{BareCall, HostDispatch};

const TOPIC: &str = "machinomy/meter/state";
const PAYLOAD: &[u8] = br#"{"energy_wh":123456,"power_w":1520,"voltage":230.1,"in_use":true}"#;

/// A plugin that subscribes to every device's state and sums each message's bytes: a handler
/// that reads its input, and little else, so the host's share is what is measured.
fn module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
  (import "machinomy" "subscribe" (func $subscribe (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $sum (mut i32) (i32.const 0))
  (data (i32.const 0) "machinomy/+/state")
  (func (export "machinomy_abi_version") (result i32) i32.const 1)
  (func (export "machinomy_alloc") (param $n i32) (result i32) i32.const 1024)
  (func (export "on_start") (drop (call $subscribe (i32.const 0) (i32.const 17))))
  (func (export "on_message") (param $tp i32) (param $tl i32) (param $pp i32) (param $pl i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $pp) (local.get $pl)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $pp) (local.get $end)))
      (global.set $sum (i32.add (global.get $sum) (i32.load8_u (local.get $pp))))
      (local.set $pp (i32.add (local.get $pp) (i32.const 1)))
      (br $next)))))"#,
    )
    .expect("bench module")
}

fn host(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> HostDispatch {
    let package = Package {
        manifest: "name = \"bench\"\nversion = \"1.0.0\"\n[grants]\nsubscribe = [\"machinomy/+/state\"]\n".to_owned(),
        wasm: module(),
    };
    rt.block_on(HostDispatch::new(dir, package)).expect("host")
}

fn rate(iterations: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    f64::from(iterations) / start.elapsed().as_secs_f64()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut host = host(&rt, dir.path());
    let mut bare = BareCall::new(&module(), TOPIC, PAYLOAD).expect("bare");
    let mut group = c.benchmark_group("plugin_dispatch");
    group.bench_function("bare_wasmtime_call", |b| b.iter(|| bare.call().expect("call")));
    group.bench_function("host_dispatch", |b| b.iter(|| host.dispatch(TOPIC, PAYLOAD)));
    group.finish();
}

criterion_group!(group, benches);

fn main() {
    group();
    criterion::Criterion::default().configure_from_args().final_summary();

    // The ratio, measured back to back in this run.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut host = host(&rt, dir.path());
    let mut bare = BareCall::new(&module(), TOPIC, PAYLOAD).expect("bare");
    let iterations = 200_000;
    // Warm both up first.
    rate(iterations / 10, || bare.call().expect("call"));
    rate(iterations / 10, || host.dispatch(TOPIC, PAYLOAD));
    let bare_rate = rate(iterations, || bare.call().expect("call"));
    let host_rate = rate(iterations, || host.dispatch(TOPIC, PAYLOAD));
    let handled = host.events("bench");
    assert!(handled >= u64::from(iterations), "the plugin handled {handled} events");
    let overhead_ns = (1e9 / host_rate) - (1e9 / bare_rate);
    eprintln!("bare wasmtime call: {bare_rate:.0} calls/s ({:.0} ns each)", 1e9 / bare_rate);
    eprintln!("host dispatch:      {host_rate:.0} events/s ({:.0} ns each)", 1e9 / host_rate);
    eprintln!("ratio host_dispatch/bare_call = {:.2}", host_rate / bare_rate);
    eprintln!("overhead per event = {overhead_ns:.0} ns (goal <= 2000 ns: ratio to goal {:.2})", overhead_ns / 2000.0);
}
