#!/usr/bin/env bash
# Runs nginx in front of local relay nodes with the example config of
# deploy/nginx.conf, for the interop tests (tests/it/interop.rs) and
# `make run-cluster`.
#
#   scripts/nginx.sh [--dir DIR] [--check] LISTEN NODE [NODE...]
#
#   LISTEN  where nginx listens: 127.0.0.1:8080 (a port alone: on 127.0.0.1)
#   NODE    a relay node: 127.0.0.1:3000
#   --dir   scratch directory for the rendered config, pid file, temp files
#           and logs (access.log names the node of each request); default
#           target/nginx/<LISTEN>
#   --check render and test the config (nginx -t), then exit
#
# nginx runs in the foreground as one process (no master, no workers, no
# daemon) with its own prefix, so it needs no root and nothing of
# /etc/nginx or /var: stop it with Ctrl-C, SIGTERM or SIGKILL. The script
# execs nginx, so its pid is nginx's. Set NGINX to use another binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
  sed -n '6,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dir="" check=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || usage; dir="$2"; shift 2 ;;
    --check) check=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "nginx.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || usage
listen="$1"; shift
nodes=("$@")

nginx_bin="${NGINX:-}"
if [ -z "$nginx_bin" ]; then
  # /usr/sbin is not on a non-root user's PATH on Debian.
  nginx_bin="$(command -v nginx 2>/dev/null || true)"
  [ -n "$nginx_bin" ] || { [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx; } || true
fi
if [ -z "$nginx_bin" ] || [ ! -x "$nginx_bin" ]; then
  echo "nginx.sh: nginx not found: install Debian's nginx-light (make deps does)" >&2
  exit 127
fi

for node in "${nodes[@]}"; do
  [[ "$node" =~ ^[A-Za-z0-9._-]+:[0-9]+$|^\[[0-9A-Fa-f:]+\]:[0-9]+$ ]] ||
    { echo "nginx.sh: a node is host:port, not '$node'" >&2; exit 2; }
done
[[ "$listen" =~ ^([A-Za-z0-9._-]+:|\[[0-9A-Fa-f:]+\]:)?[0-9]+$ ]] ||
  { echo "nginx.sh: LISTEN is [host:]port, not '$listen'" >&2; exit 2; }

[[ "$listen" =~ ^[0-9]+$ ]] && listen="127.0.0.1:$listen"

dir="${dir:-$root/target/nginx/${listen//[^A-Za-z0-9._-]/_}}"
mkdir -p "$dir/tmp"
dir="$(cd "$dir" && pwd)"

# deploy/nginx.conf with this machine's nodes and listen address: each run
# of `relay:node` lines becomes one line per node, same indentation.
awk -v nodes="${nodes[*]}" -v listen="$listen" '
  /# relay:node/ {
    if (!in_run) {
      indent = $0; sub(/[^ \t].*$/, "", indent)
      n = split(nodes, list, " ")
      for (i = 1; i <= n; i++) printf "%sserver %s; # relay:node\n", indent, list[i]
    }
    in_run = 1; next
  }
  { in_run = 0 }
  /# relay:listen/ {
    indent = $0; sub(/[^ \t].*$/, "", indent)
    printf "%slisten %s; # relay:listen\n", indent, listen; next
  }
  { print }
' "$root/deploy/nginx.conf" >"$dir/relay.conf"

# Two descriptors per proxied connection: as many connections as the open
# file limit allows (raised to the hard limit, which needs no root).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile="$(ulimit -n)"
[ "$nofile" = unlimited ] && nofile=65536
connections=$(( nofile / 2 - 16 ))
[ "$connections" -gt 16384 ] && connections=16384
[ "$connections" -lt 64 ] && connections=64

cat >"$dir/nginx.conf" <<CONF
# Rendered by scripts/nginx.sh: a private nginx around deploy/nginx.conf.
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events {
    worker_connections $connections;
}
http {
    default_type application/octet-stream;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    log_format relay '\$remote_addr [\$time_local] "\$request" \$status '
                     'node=\$upstream_addr time=\$request_time';
    access_log $dir/access.log relay;
    include $dir/relay.conf;
}
CONF

"$nginx_bin" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" || {
  echo "nginx.sh: the rendered config in $dir is invalid (see above)" >&2
  exit 1
}
if [ -n "$check" ]; then
  echo "nginx.sh: $dir/nginx.conf is valid" >&2
  exit 0
fi
echo "nginx.sh: listening on $listen for ${nodes[*]} (config and logs in $dir)" >&2
exec "$nginx_bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
