#!/usr/bin/env bash
# The whole test suite, after installing what it needs. `.ci/run` calls exactly this.
#   bash deploy/test.sh                  # everything (CI)
#   bash deploy/test.sh -m "not slow"    # the fast unit layer (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
# Every layer by default, so the whole suite runs; a missing engine is then a failure, not a skip.
export HEARTH_SETUP_LAYERS="${HEARTH_SETUP_LAYERS-vm docker openclaw browser}"
case " $HEARTH_SETUP_LAYERS " in *" docker "*) export HEARTH_REQUIRE_DOCKER=1 ;; esac
bash deploy/setup.sh
echo "== ruff"; ruff check agent cluster tests bench
echo "== mypy"; mypy
echo "== pytest"
python3 -m pytest -p no:cacheprovider "$@"
