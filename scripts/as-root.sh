# Sourced by the top-level scripts: they need root (packages, containers,
# network namespaces). As root, nothing happens; otherwise the calling script
# runs itself again through sudo, keeping PATH (cargo and rustup live in the
# caller's home) and the environment; without sudo it stops with a message.
# The caller has already changed to the repository root.
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo --preserve-env env "PATH=$PATH" "$PWD/scripts/$(basename "$0")" "$@"
  fi
  echo "$(basename "$0"): must run as root, and sudo is not installed; run it as root" >&2
  exit 1
fi
