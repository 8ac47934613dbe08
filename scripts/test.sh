#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# then runs every test (unit, contract suites against a real etcd and real
# systemd machines, end-to-end clusters), then each fuzz target briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/as-root.sh
./scripts/setup.sh
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
# A short run of every fuzz target from its seeds (longer: scripts/fuzz.sh 600).
./scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
