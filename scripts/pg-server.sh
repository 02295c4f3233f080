#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, on 127.0.0.1 only.
#
#   eval "$(scripts/pg-server.sh start)"   # prints `export METIS_TEST_DATABASE_URL=...`
#   scripts/pg-server.sh url               # the URL of a running server
#   scripts/pg-server.sh stop              # stops it and deletes its data directory
#   scripts/pg-server.sh halt|resume       # stop / start it again, keeping its data (the
#                                          # fleet tests take the database away mid-load)
#
# Uses Debian's postgresql package (initdb, pg_ctl from /usr/lib/postgresql/*/bin), its own
# data directory (${METIS_PG_DIR:-${TMPDIR:-/tmp}/metis-pg-$UID}) and port
# ${METIS_PG_PORT:-55432}; fsync off (a test server: speed over durability). PostgreSQL
# refuses to run as root, so as root it runs as the unprivileged OS user `metis-pg`
# (created when missing). Nothing is listened on beyond 127.0.0.1.
set -euo pipefail

PORT=${METIS_PG_PORT:-55432}
DIR=${METIS_PG_DIR:-${TMPDIR:-/tmp}/metis-pg-$(id -u)}
DB_USER=metis
SERVER_OPTS="-h 127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
URL="postgres://${DB_USER}@127.0.0.1:${PORT}/postgres?sslmode=disable"

bin() {
  local name=$1 found
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  found=$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$found" ]; then
    echo "pg-server.sh: $name not found; install PostgreSQL (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "$found"
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u metis-pg -- "$@"
  else
    "$@"
  fi
}

case "${1:-}" in
  start)
    INITDB=$(bin initdb); PG_CTL=$(bin pg_ctl)
    if [ "$(id -u)" -eq 0 ] && ! id metis-pg >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin metis-pg
    fi
    if [ -f "$DIR/data/postmaster.pid" ] && as_owner "$PG_CTL" -D "$DIR/data" status >/dev/null 2>&1; then
      echo "export METIS_TEST_DATABASE_URL='$URL'"
      exit 0
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    [ "$(id -u)" -eq 0 ] && chown metis-pg "$DIR"
    as_owner "$INITDB" -D "$DIR/data" -U "$DB_USER" --auth=trust --encoding=UTF8 --no-sync >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; exit 1; }
    as_owner "$PG_CTL" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
      -o "$SERVER_OPTS" \
      start >/dev/null \
      || { cat "$DIR/server.log" >&2; exit 1; }
    echo "export METIS_TEST_DATABASE_URL='$URL'"
    ;;
  url)
    echo "$URL"
    ;;
  halt)
    as_owner "$(bin pg_ctl)" -D "$DIR/data" -m fast -w stop >/dev/null
    ;;
  resume)
    as_owner "$(bin pg_ctl)" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
      -o "$SERVER_OPTS" \
      start >/dev/null
    ;;
  stop)
    if [ -d "$DIR/data" ]; then
      PG_CTL=$(bin pg_ctl)
      as_owner "$PG_CTL" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
    ;;
  *)
    echo "usage: scripts/pg-server.sh start|url|stop|halt|resume" >&2
    exit 2
    ;;
esac
