#!/usr/bin/env bash
# Checks the observability files: grafana/relay.json (structure, and every
# panel query as PromQL through promtool), prometheus/alerts.yml (promtool
# check rules, runbooks in docs/operations.md, the chart's copy) and its
# unit tests prometheus/alerts_test.yml (promtool test rules), and that
# docs/metrics.md lists every metric they use. Arguments go to
# scripts/check_observability.py, e.g. live nodes' scrapes:
#
#   scripts/check-observability.sh
#   scripts/check-observability.sh --metrics-file node-1.prom --metrics-file node-2.prom
#   scripts/check-observability.sh --metrics-url http://127.0.0.1:3000/metrics
#
# Needs promtool (Debian/Ubuntu: apt-get install prometheus; or
# PROMTOOL=/path/to/promtool) and Python 3.9+ with venv (python3-venv; or
# PYTHON=...). The checker runs in a virtual environment, target/obs-venv
# (or OBS_VENV=/path), with pinned PyYAML and prometheus_client; PyPI is only
# reached when it is created or its pins change. Exit status: 0 passed,
# 1 a check failed, 2 the checks could not run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

VENV="${OBS_VENV:-$ROOT/target/obs-venv}"
# Pinned; bump deliberately (scripts/check-chart.sh pins the same PyYAML).
REQUIREMENTS=(
  "PyYAML==6.0.4"
  "prometheus_client==0.26.0"
)

PROMTOOL="${PROMTOOL:-promtool}"
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
  echo "check-observability: promtool not found; install it (apt-get install prometheus) or set PROMTOOL" >&2
  exit 2
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
  echo "check-observability: needs Python 3.9 or later as '$PYTHON' (set PYTHON=...)" >&2
  exit 2
fi

# Create or update the environment under a lock, so that concurrent runs
# (parallel tests) neither race nor see it half-installed.
stamp="$VENV/.relay-requirements"
want="$(printf '%s\n' "${REQUIREMENTS[@]}")"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  echo "check-observability: creating virtual environment $VENV" >&2
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV" >&2; then
    echo "check-observability: python venv failed (Debian: apt-get install python3-venv)" >&2
    rm -rf "$VENV"
    exit 2
  fi
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "check-observability: installing ${REQUIREMENTS[*]}" >&2
  rm -f "$stamp"
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >&2; then
    echo "check-observability: pip install failed (PyPI unreachable?)" >&2
    exit 2
  fi
  printf '%s\n' "$want" >"$stamp"
fi
exec 9>&-

exec "$VENV/bin/python" "$ROOT/scripts/check_observability.py" --promtool "$PROMTOOL" "$@"
