#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test the hub. Idempotent: it checks
# before it installs, so running it again costs a second. Run by packaging/run-tests.sh.
set -euo pipefail

say() { printf 'setup-dev: %s\n' "$*"; }

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- Debian packages --------------------------------------------------------------------------
# build-essential, pkg-config: C toolchain for -sys crates (aws-lc for QUIC's TLS among them).
# iproute2: the mDNS test runs hubs in a network namespace it creates, linked by veth.
# tzdata: the hub shows times in the home's time zone, read from /usr/share/zoneinfo.
apt_packages=(build-essential pkg-config ca-certificates iproute2 tzdata)
# mosquitto, python3, python3-paho-mqtt, python3-nacl: the MQTT bridge's end-to-end tests run the
# Mosquitto broker the product ships config for (packaging/mosquitto/) and tests/appliance.py, an
# appliance written in Python against the same broker (run with /usr/bin/python3).
apt_packages+=(mosquitto python3 python3-paho-mqtt python3-nacl)
# libdbus-1-dev: the hub's default `ble` feature builds btleplug, which talks to BlueZ over D-Bus.
apt_packages+=(libdbus-1-dev)
# chromium, chromium-driver: the web UI's browser tests drive a headless Chromium through
# chromedriver (WebDriver) against real hubs on loopback (tests/src/browser.rs).
apt_packages+=(chromium chromium-driver)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    sudo_if_needed apt-get update -q
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- Rust -------------------------------------------------------------------------------------
# The toolchain comes from rustup (Rust 1.95, see rust-version in Cargo.toml); rustup itself
# cannot be fetched from here, so its absence is an error with a clear message.
if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust 1.95 with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
        say "adding the ${component} component"
        rustup component add "$component"
    fi
done

# --- WebAssembly plugins ----------------------------------------------------------------------
# plugins/build.sh builds the example plugins for wasm32-unknown-unknown; the end-to-end tests
# load them into the hub. rustup's target is preferred, but adding it needs the network, so when
# it cannot be added Debian's Rust 1.63 with its wasm32 std is the fallback (the SDK and the
# plugins build on 1.63; build.sh picks whichever is there). lld-14 is part of that toolchain:
# Debian's rustc links wasm with rust-lld, a link to lld-14 that it only recommends.
wasm_target=wasm32-unknown-unknown
rustup_has_wasm() {
    command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$wasm_target"
}
if ! rustup_has_wasm && command -v rustup >/dev/null 2>&1; then
    say "adding the ${wasm_target} target"
    rustup target add "$wasm_target" || say "rustup could not add ${wasm_target}; using Debian's wasm toolchain"
fi
if ! rustup_has_wasm; then
    wasm_missing=()
    for pkg in rustc cargo libstd-rust-dev-wasm32 lld-14; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || wasm_missing+=("$pkg")
    done
    if [ "${#wasm_missing[@]}" -gt 0 ]; then
        say "installing ${wasm_missing[*]}"
        sudo_if_needed apt-get update -q
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${wasm_missing[@]}"
    fi
fi

say "ready"
