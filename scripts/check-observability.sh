#!/usr/bin/env bash
# Checks the observability files: grafana/relay.json (structure, and every
# panel query as PromQL through promtool), prometheus/alerts.yml (promtool
# check rules, runbooks in docs/operations.md, the chart's copy) and its
# unit tests prometheus/alerts_test.yml (promtool test rules), and that
# docs/metrics.md lists every metric they use. Arguments go to
# scripts/check_observability.py, e.g. a live node's scrape:
#
#   scripts/check-observability.sh
#   scripts/check-observability.sh --metrics-file target/tmp/scrape.txt
#   scripts/check-observability.sh --metrics-url http://127.0.0.1:3000/metrics
#
# Needs python3 (standard library only) and promtool (Debian/Ubuntu:
# apt-get install prometheus; or PROMTOOL=/path/to/promtool).
set -euo pipefail
cd "$(dirname "$0")/.."

PROMTOOL="${PROMTOOL:-promtool}"
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
  echo "check-observability: promtool not found; install it (apt-get install prometheus) or set PROMTOOL" >&2
  exit 2
fi
exec python3 scripts/check_observability.py --promtool "$PROMTOOL" "$@"
