#!/usr/bin/env bash
# Installs everything fleet's build, demo and tests need on a Debian machine.
# Idempotent: packages already present are not touched; apt-get update runs
# only when something is missing.
set -euo pipefail

packages=(
  protobuf-compiler libprotobuf-dev   # etcd-client's build script runs protoc
  etcd-server etcd-client             # the real etcd the tests and the demo run
  systemd-container                   # systemd-nspawn: the test machines
  systemd dbus                        # the machines boot the host's own /usr
  nftables iproute2                   # network namespaces, cutting machines off
  openssh-server openssh-client       # sshd in the test machines, ssh-agent/ssh-keygen for fleetctl's SSH tests
  tmux                                # a terminal for the interactive fleetctl ssh test
  python3                             # the TCP forwarder inside a machine (fleetctl --tunnel --driver=etcd test)
  openssl                             # test certificates for etcd over TLS
  g++                                 # libfuzzer-sys builds libFuzzer for the fuzz targets
  curl ca-certificates
)

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: must run as root (it installs packages and the tests boot containers)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

# cargo-fuzz for the fuzz targets (scripts/fuzz.sh), only when missing; a
# nightly toolchain is used if installed, else stable with RUSTC_BOOTSTRAP.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
