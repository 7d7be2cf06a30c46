#!/usr/bin/env bash
# Makes sure the programs the test suite runs for real are installed:
# installs them with apt-get when that is possible, else names the package.
set -euo pipefail

need() { # program debian-package
  command -v "$1" >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else
        echo "make test needs '$1': install the Debian package '$2' (apt-get install $2)" >&2; exit 1
      fi
    fi
    echo "installing $2 (for $1)..." >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "make test needs '$1' (Debian/Ubuntu package '$2', Homebrew formula 'redis')" >&2
    exit 1
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "installing $2 did not provide $1" >&2; exit 1; }
}

need redis-server redis-server
# The Redis Cluster tests (tests/it/support/redis_cluster.rs) join six
# servers with `redis-cli --cluster create` and use sharded pub/sub: Redis
# 7.0 or later (Debian's redis-server pulls in redis-tools, with redis-cli).
need redis-cli redis-tools
redis_major="$(redis-server --version | sed -n 's/.*v=\([0-9]*\)\..*/\1/p')"
if [ "${redis_major:-0}" -lt 7 ]; then
  echo "make test needs redis-server 7.0 or later for the Redis Cluster tests (found: $(redis-server --version))" >&2
  exit 1
fi
# (`--cluster help` exits 1 after printing its help.)
if ! grep -q '^  create' <<<"$(redis-cli --cluster help 2>&1 || true)"; then
  echo "make test needs a redis-cli with --cluster create (redis-tools 7)" >&2
  exit 1
fi
# promtool checks the dashboard, the alert rules and a live scrape (tests/it/observability.rs).
need promtool prometheus
need python3 python3
# Its checker's virtual environment (PyYAML, prometheus_client), made once
# here rather than inside a test's time limit.
"$(dirname "$0")/check-observability.sh" --help >/dev/null
# The interop suite (tests/it/interop.rs) and the browser test of /demo:
# the official JavaScript and Python clients, nginx in front of the nodes,
# and Debian's Chromium. nginx is in /usr/sbin, which is not on a non-root
# user's PATH.
PATH="$PATH:/usr/sbin"
need node nodejs
need npm npm
need nginx nginx-light
need chromium chromium
"$(dirname "$0")/interop-deps.sh"
