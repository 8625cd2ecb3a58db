#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up the machine, then formatting, lints and every test
# (unit, property, handler, end-to-end against real hub processes, benchmarks in test mode).
set -euo pipefail
cd "$(dirname "$0")/.."

packaging/setup-dev.sh
cargo fmt --all -- --check
# The plugin SDK and plugins: their own workspace (edition 2021, Rust 1.63+), tested natively on
# the SDK's mock host, then built to wasm for the hub's tests to load.
(cd plugins && cargo fmt --all -- --check && cargo clippy --all-targets --locked -- -D warnings && cargo test --locked)
plugins/build.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
