#!/usr/bin/env bash
# What `make test` needs besides .venv, made present: `make test-deps` runs this (and `make test`
# and .ci/run through it). Everything there: a few checks, no output, well under a second.
#
#   chromium, chromedriver   the Models page in a browser (tests/integration/test_models_page.py)
#   docker-compose           `config` of the Compose stack (test_compose.py); the docker compose
#                            plugin does as well
#   PostgreSQL, Redis        the Celery deployment (tests/integration/conftest.py): 127.0.0.1:5432,
#                            user postgres without a password, and 127.0.0.1:6379
#
# Missing packages are installed with apt-get (Debian) when run as root; installed services are
# started when stopped. Where that cannot be done here (not root, no apt-get), it stops with one
# line that names what is missing and the command that provides it, and exits 1.
set -euo pipefail

PG_PORT=5432
REDIS_PORT=6379

die() {
  echo "make test needs $*" >&2
  exit 1
}

listening() {  # something accepts TCP connections on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_listening() {  # poll for up to $2 seconds
  local tries=$(($2 * 5))
  until listening "$1"; do
    ((tries-- > 0)) || return 1
    sleep 0.2
  done
}

pg_cluster() {  # the newest installed cluster's version (Debian's layout), or nothing
  local dir version="" v
  command -v pg_ctlcluster >/dev/null || return 0
  for dir in /etc/postgresql/*/main; do
    [[ -d $dir ]] || continue
    v=${dir#/etc/postgresql/}
    v=${v%/main}
    if [[ -z $version ]] || ((${v%%.*} > ${version%%.*})); then version=$v; fi
  done
  echo "$version"
}

# -- what is missing ----------------------------------------------------------------------------
packages=()
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
command -v docker-compose >/dev/null \
  || { command -v docker >/dev/null && docker compose version >/dev/null 2>&1; } \
  || packages+=(docker-compose)
pg_version=""
if ! listening $PG_PORT; then
  pg_version=$(pg_cluster)
  [[ -n $pg_version ]] || packages+=(postgresql)
fi
listening $REDIS_PORT || command -v redis-server >/dev/null || packages+=(redis-server)

# -- where this user cannot provide it: one line ------------------------------------------------
listed() {  # "a, b, c"
  local out=$1
  shift
  for item in "$@"; do out+=", $item"; done
  echo "$out"
}
install="apt-get update && apt-get install -y --no-install-recommends ${packages[*]}"
if ((${#packages[@]})) && ! command -v apt-get >/dev/null; then
  die "$(listed "${packages[@]}") (not installed), and this system has no apt-get: install" \
    "them with its package manager (on Debian, as root: $install)"
fi
if ((EUID != 0)); then
  needs=() commands=()
  if ((${#packages[@]})); then
    needs+=("$(listed "${packages[@]}") (not installed)")
    commands+=("$install")
  fi
  if [[ -n $pg_version ]]; then
    needs+=("PostgreSQL $pg_version (installed, stopped)")
    commands+=("pg_ctlcluster $pg_version main start")
  fi
  if ((${#needs[@]})); then
    die "$(listed "${needs[@]}"); as root, run: ${commands[0]}${commands[1]:+ && ${commands[1]}}"
  fi
fi

# -- install (root, Debian) ---------------------------------------------------------------------
fresh_postgres=false
if ((${#packages[@]})); then
  echo "installing ${packages[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq update
  apt-get -qq install -y --no-install-recommends "${packages[@]}" >/dev/null
  if [[ " ${packages[*]} " == *" postgresql "* ]]; then
    fresh_postgres=true
    pg_version=$(pg_cluster)
    if [[ -z $pg_version ]]; then  # the package made no cluster (createcluster.conf says so)
      pg_version=$(basename "$(ls -d /usr/lib/postgresql/*/ | sort -V | tail -1)")
      pg_createcluster "$pg_version" main >/dev/null
    fi
  fi
fi

# -- start what is stopped ----------------------------------------------------------------------
if [[ $fresh_postgres == true ]]; then
  # A cluster this script just made: the tests connect as postgres from this machine without a
  # password. (An existing cluster's authentication is its owner's: it is checked below.)
  hba=/etc/postgresql/$pg_version/main/pg_hba.conf
  sed -i "1i host all postgres 127.0.0.1/32 trust  # make test (scripts/setup-test-services.sh)" \
    "$hba"
  if listening $PG_PORT; then pg_ctlcluster --skip-systemctl-redirect "$pg_version" main reload; fi
fi
if ! listening $PG_PORT; then
  echo "starting PostgreSQL $pg_version"
  started=$(pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start 2>&1) || true
  wait_listening $PG_PORT 30 || die "PostgreSQL on 127.0.0.1:$PG_PORT: PostgreSQL $pg_version" \
    "did not start there (${started//$'\n'/ }; its log:" \
    "/var/log/postgresql/postgresql-$pg_version-main.log)"
fi
if command -v psql >/dev/null \
  && ! psql -h 127.0.0.1 -p $PG_PORT -U postgres -d postgres -w -Atqc "select 1" >/dev/null 2>&1; then
  die "user postgres to log in to PostgreSQL on 127.0.0.1:$PG_PORT without a password, which it" \
    "refuses: put 'host all postgres 127.0.0.1/32 trust' first in its pg_hba.conf, then reload it"
fi
if ! listening $REDIS_PORT; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $REDIS_PORT --save "" \
    --appendonly no --dir "${TMPDIR:-/tmp}" >/dev/null
  wait_listening $REDIS_PORT 10 || die "Redis on 127.0.0.1:$REDIS_PORT: redis-server did not start"
fi
