#!/usr/bin/env bash
# Set everything up and run the demo PRD end to end on this machine:
# local Ray, the bwrap sandbox and the embedded SmolLM2 model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
started=$(date +%s)
hearth up
trap 'hearth down' EXIT
demo="$(mktemp -d)/greeting"
cp -r examples/greeting "$demo"
git -C "$demo" init -q -b main
git -C "$demo" add -A
git -C "$demo" -c user.name=demo -c user.email=demo@localhost commit -qm "greeting example"
hearth init "$demo" --check "python3 check.py"
hearth plan "$demo/tasks/prd.json"
hearth submit "$demo/tasks/prd.json" --follow
echo "demo finished in $(( $(date +%s) - started )) s; the project is at $demo"
