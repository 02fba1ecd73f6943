#!/usr/bin/env bash
# Builds the coolantd Debian package into target/debian/. Installs cargo-deb first when it
# is missing. Extra arguments go to `cargo deb` (for example --no-strip or --target).
set -euo pipefail

cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb not found; installing it from crates.io (takes a few minutes)" >&2
    cargo install cargo-deb --locked
fi

for f in config/example.toml README.md; do
    if [ ! -f "$f" ]; then
        echo "error: $f is missing; the package installs it (see [package.metadata.deb] in Cargo.toml)" >&2
        exit 1
    fi
done

# zlib: the debug-section compression Rust's own backtrace reader (std, via gimli)
# decompresses; cargo-deb's other choice, zstd, is smaller but may not be read back.
cargo deb --compress-debug-symbols=zlib "$@"
ls -l target/debian/*.deb
