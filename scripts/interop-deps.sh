#!/usr/bin/env bash
# Installs the official Socket.IO clients that the interop suite
# (tests/it/interop.rs) runs: socket.io-client from interop/package-lock.json
# (`npm ci` into interop/node_modules) and python-socketio from
# interop/py/requirements.txt (a virtual environment in target/interop-venv).
# Idempotent: each part is redone only when its lock or requirements file
# changed since it was installed. Needs node, npm and python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "interop-deps: $*" >&2; exit 1; }
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

command -v node >/dev/null 2>&1 || fail "node not found: install Debian's nodejs (make deps does)"
command -v npm >/dev/null 2>&1 || fail "npm not found: install Debian's npm (make deps does)"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || fail "$python not found: install Debian's python3 and python3-venv"

# JavaScript: exactly the lockfile's versions.
js_stamp="interop/node_modules/.interop-deps"
want="$(stamp_of interop/package.json interop/package-lock.json)"
if [ "$(cat "$js_stamp" 2>/dev/null)" != "$want" ] ||
  [ ! -f interop/node_modules/socket.io-client/package.json ]; then
  echo "interop-deps: npm ci in interop/" >&2
  (cd interop && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$js_stamp"
fi

# Python: a venv of its own, so nothing touches the system's packages.
venv="target/interop-venv"
py_stamp="$venv/.interop-deps"
want="$(stamp_of interop/py/requirements.txt)"
if [ "$(cat "$py_stamp" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c 'import socketio' 2>/dev/null; then
  echo "interop-deps: python-socketio into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv" || fail "'$python -m venv' failed: install Debian's python3-venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r interop/py/requirements.txt
  echo "$want" >"$py_stamp"
fi
