#!/usr/bin/env bash
# Builds the coolantd Debian package into target/debian/: coolantd_*.deb and, beside it, the
# debug information as coolantd-dbgsym_*.ddeb. Installs the pinned cargo-deb first when it is
# missing or another version. Extra arguments go to `cargo deb` (for example --target).
set -euo pipefail

cd "$(dirname "$0")/.."

# Pinned: the package layout (--dbgsym, the changelog, asset globs) is checked against it.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    echo "installing cargo-deb $CARGO_DEB_VERSION from crates.io (takes a few minutes)" >&2
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

for f in config/example.toml config/agent.toml config/sim.toml README.md debian/changelog; do
    if [ ! -f "$f" ]; then
        echo "error: $f is missing; the package installs it (see [package.metadata.deb] in Cargo.toml)" >&2
        exit 1
    fi
done

cargo build --release
# The host agent's own binary, with its size-optimised profile ([profile.agent] in Cargo.toml).
cargo build --profile agent --bin coolantd-agent
bin=target/release/coolantd

# Generated assets, from the binary just built, so they match its command line.
rm -rf target/assets
mkdir -p target/assets/man target/assets/completions
"$bin" generate-man target/assets/man
gzip -9n target/assets/man/*.1
"$bin" completions bash > target/assets/completions/coolantd.bash
"$bin" completions zsh > target/assets/completions/_coolantd
"$bin" completions fish > target/assets/completions/coolantd.fish
# The simulator configuration with the installed paths (state under /var/lib/coolantd,
# profiles under /usr/share/coolantd), for `coolantd run --config .../examples/sim.toml`.
sed -e 's#^state_dir = .*#state_dir = "/var/lib/coolantd/sim"#' \
    -e 's#^profiles_dir = .*#profiles_dir = "/usr/share/coolantd/firmware-profiles"#' \
    -e 's#cargo run --release -- run --config config/sim.toml#coolantd run --dry-run --config /usr/share/doc/coolantd/examples/sim.toml#' \
    config/sim.toml > target/assets/sim.toml
"$bin" check-config --config target/assets/sim.toml >/dev/null 2>&1 || {
    # Installed paths do not exist on the build machine; check it against the repository's
    # profiles instead, so a broken file never ships.
    sed 's#"/usr/share/coolantd/firmware-profiles"#"'"$PWD"'/firmware-profiles"#' target/assets/sim.toml > target/assets/sim-check.toml
    "$bin" check-config --config target/assets/sim-check.toml >/dev/null
    rm -f target/assets/sim-check.toml
}

# zlib: the debug-section compression Rust's own backtrace reader (std, via gimli)
# decompresses; cargo-deb's other choice, zstd, is smaller but may not be read back.
cargo deb --no-build --dbgsym --compress-debug-symbols=zlib "$@"
ls -l target/debian/
