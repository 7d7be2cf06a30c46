#!/usr/bin/env bash
# Offline checks of the Helm chart (helm/relay) and the Dockerfile: lint,
# render, schema and Kubernetes validation, yamllint, and assertions.
# No helm binary, cluster or Docker engine needed; only PyPI is reached, and
# only when the virtual environment is created or its pins change.
#
#   scripts/check-chart.sh            # from anywhere in the repository
#   CHART_VENV=/path scripts/check-chart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CHART_VENV:-target/chart-venv}"
# Pinned tools; bump deliberately. helm-python-sdk wraps the Helm v4 Go SDK.
REQUIREMENTS=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "yamllint==1.38.0"
  "dockerfile==3.4.0"
  "jsonschema==4.26.0"
  "PyYAML==6.0.4"
)

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "check-chart: needs Python 3.11 or later as '$PYTHON' (set PYTHON=...)" >&2
  exit 1
fi

stamp="$VENV/.relay-requirements"
want="$(printf '%s\n' "${REQUIREMENTS[@]}")"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  echo "check-chart: creating virtual environment $VENV" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "check-chart: installing ${REQUIREMENTS[*]}" >&2
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"; then
    echo "check-chart: pip install failed (PyPI unreachable?)" >&2
    exit 1
  fi
  printf '%s\n' "$want" >"$stamp"
fi

exec "$VENV/bin/python" scripts/check_chart.py "$@"
