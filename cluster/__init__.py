"""Ray: where and when tasks run, the durable store, the sidecar API, the OpenClaw bridge, the CLI."""

import os

# Ray 2.60 turns token auth on for `ray start --head` as soon as ~/.ray/auth_token exists (which a
# plain ray.init() creates), while drivers keep it off and then fail to connect. Be explicit: off
# unless the user chose a mode. See docs/operations.md.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
