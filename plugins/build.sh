#!/usr/bin/env bash
# Builds every plugin of this workspace for wasm32-unknown-unknown (release) and lays each one out
# as dist/<name>/plugin.toml + dist/<name>/<name>.wasm, ready for
# `machinomy-hub plugin install plugins/dist/<name>`. Quick when nothing changed: cargo decides
# what to rebuild, and files in dist/ are replaced only when they differ.
#
# Toolchain: rustup's when its active toolchain has the wasm32 target, else Debian's Rust 1.63
# (packages rustc, cargo, libstd-rust-dev-wasm32 and lld-14; packaging/setup-dev.sh installs them).
# MACHINOMY_WASM_TOOLCHAIN=rustup|debian forces one. CARGO_TARGET_DIR overrides plugins/target
# (Debian's toolchain builds in its debian/ subdirectory).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-unknown-unknown
dist="$here/dist"
target_dir="${CARGO_TARGET_DIR:-$here/target}"

say() { printf 'build.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

rustup_has_wasm() {
    command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$target"
}

# Debian's rustc finds its wasm32 std under its sysroot and links with rust-lld (from lld-14).
# ~/.cargo/bin usually comes first on PATH, so these are called by their absolute paths.
debian_has_wasm() {
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && [ -x /usr/bin/rust-lld ] &&
        [ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/$target/lib" ]
}

toolchain="${MACHINOMY_WASM_TOOLCHAIN:-auto}"
case "$toolchain" in
    auto)
        if rustup_has_wasm; then
            toolchain=rustup
        elif debian_has_wasm; then
            toolchain=debian
        else
            die "no Rust toolchain for $target: run 'rustup target add $target', or install Debian's rustc cargo libstd-rust-dev-wasm32 lld-14 (packaging/setup-dev.sh does)"
        fi
        ;;
    rustup)
        rustup_has_wasm || die "rustup's active toolchain lacks $target: run 'rustup target add $target'"
        ;;
    debian)
        debian_has_wasm || die "Debian's wasm toolchain is incomplete: apt-get install rustc cargo libstd-rust-dev-wasm32 lld-14"
        ;;
    *)
        die "MACHINOMY_WASM_TOOLCHAIN must be rustup or debian, not '$toolchain'"
        ;;
esac

if [ "$toolchain" = rustup ]; then
    # `rustup run` pins cargo and rustc to the toolchain whose targets were checked above,
    # whatever PATH says.
    active="$(rustup show active-toolchain | awk '{print $1}')"
    cargo=(rustup run "$active" cargo)
    export CARGO_TARGET_DIR="$target_dir"
else
    cargo=(env RUSTC=/usr/bin/rustc /usr/bin/cargo)
    # A cdylib's file name carries no toolchain hash, so two toolchains sharing a target dir
    # would each take the other's newer .wasm for up to date: Debian's builds go beside.
    export CARGO_TARGET_DIR="$target_dir/debian"
fi
say "toolchain: $toolchain ($("${cargo[@]}" --version), $(if [ "$toolchain" = rustup ]; then rustup run "$active" rustc --version; else /usr/bin/rustc --version; fi))"

started=$(date +%s%N)
"${cargo[@]}" build --manifest-path "$here/Cargo.toml" --workspace --release --target "$target"
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))

# Replaces $2 with $1 only when they differ, so an unchanged build leaves dist/ untouched.
copy_if_changed() {
    if ! cmp -s "$1" "$2"; then
        install -m 0644 "$1" "$2"
    fi
}

# A manifest's top-level string value (`key = "value"` before any [table]).
manifest_value() {
    awk -v key="$2" '
        /^[[:space:]]*\[/ { exit }
        $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
        }' "$1"
}

built=()
for manifest in "$here"/*/plugin.toml; do
    crate_dir="$(dirname "$manifest")"
    [ -f "$crate_dir/Cargo.toml" ] || continue
    crate="$(basename "$crate_dir")"
    name="$(manifest_value "$manifest" name)"
    [ -n "$name" ] || die "$manifest has no name"
    wasm_name="$(manifest_value "$manifest" wasm)"
    wasm_name="${wasm_name:-$name.wasm}"
    artifact="$CARGO_TARGET_DIR/$target/release/${crate//-/_}.wasm"
    [ -f "$artifact" ] || die "cargo built no $artifact (is $crate a cdylib in the workspace?)"
    mkdir -p "$dist/$name"
    copy_if_changed "$manifest" "$dist/$name/plugin.toml"
    copy_if_changed "$artifact" "$dist/$name/$wasm_name"
    built+=("$dist/$name/$wasm_name")
    printf '  %-20s %8d bytes  %s\n' "$name" "$(stat -c %s "$dist/$name/$wasm_name")" "dist/$name/$wasm_name"
done
[ "${#built[@]}" -gt 0 ] || die "no plugin found (a plugin is a crate directory with a plugin.toml)"

# Every module must speak exactly the ABI in sdk/src/abi.rs (imports and exports).
if command -v python3 >/dev/null 2>&1; then
    python3 "$here/check-wasm.py" --abi "$here/../sdk/src/abi.rs" "${built[@]}"
else
    say "python3 not found: skipped checking the modules against the ABI"
fi

say "built ${#built[@]} plugins in ${elapsed_ms} ms"
echo "$dist"
