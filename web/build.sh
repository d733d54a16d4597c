#!/usr/bin/env bash
# Builds the page's WebAssembly into web/pkg/ (a build output, not committed): the selfish
# library for wasm32 with its browser entry points (src/web/), then wasm-bindgen's
# JavaScript glue. wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
install="cargo install wasm-bindgen-cli --version $want"
if ! command -v wasm-bindgen >/dev/null; then
  echo "web/build.sh: wasm-bindgen is not installed: run \`$install\`" >&2
  exit 1
fi
have=$(wasm-bindgen --version | awk '{print $2}')
if [ "$have" != "$want" ]; then
  echo "web/build.sh: wasm-bindgen $have is installed but Cargo.lock has $want: run \`$install\`" >&2
  exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -x wasm32-unknown-unknown >/dev/null; then
  echo "web/build.sh: the wasm32 target is missing: run \`rustup target add wasm32-unknown-unknown\`" >&2
  exit 1
fi

# A cdylib only for this build, so native builds do not link a shared library they never use.
cargo rustc --lib --release --target wasm32-unknown-unknown --crate-type cdylib
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
wasm-bindgen --target web --no-typescript --out-dir web/pkg --out-name selfish \
  "$target/wasm32-unknown-unknown/release/selfish.wasm"
echo "built web/pkg (serve it with \`selfish serve\`)"
