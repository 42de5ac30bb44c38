#!/usr/bin/env bash
# What the native stack needs from the machine: uv (through pip), and on Debian a JDK 17, Maven,
# the PostgreSQL server and client, curl, and a `postgres` user to run the cluster as; for the
# tests also Chromium and poppler-utils.
# Installs what is missing when it can (uv always; system packages as root on Debian), otherwise
# stops with one line saying exactly what to run. `make install` calls it for uv, `make up`,
# `make test` and `make bench` for the stack too, so the README's two commands are all a
# newcomer types. Usage: deploy/prerequisites.sh uv|stack|test
set -euo pipefail

log() { printf '[prerequisites] %s\n' "$*"; }

have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

# Installs the Debian packages given (as root), or stops with the one line to run.
install_or_say() {
  local what="$1"
  shift
  [ "$#" -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  elif command -v apt-get >/dev/null 2>&1; then
    log "missing: run  sudo apt-get install -y $*" >&2
    exit 1
  else
    log "missing $*: install $what" >&2
    exit 1
  fi
}

stack_packages() {
  missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  have_initdb || missing+=(postgresql)

  install_or_say "a JDK 17, Maven, the PostgreSQL 15 server and client, and curl" "${missing[@]}"

  # PostgreSQL refuses to run as root; the stack runs the cluster as `postgres` when it is root.
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    log "adding the system user postgres"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
}

# What the tests of what a person sees need: a headless browser for the audit console, and
# poppler's pdftotext to read the PDF invoices and reports back.
test_packages() {
  missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
  install_or_say "Chromium and poppler's pdftotext" "${missing[@]}"
}

uv_tool() {
  if ! command -v "${UV:-uv}" >/dev/null 2>&1; then
    log "installing uv (python3 -m pip install uv)"
    python3 -m pip install --quiet uv 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages uv \
      || { log "could not install uv: run  python3 -m pip install --user uv" >&2; exit 1; }
  fi
}

case "${1:-}" in
  uv) uv_tool ;;
  stack) stack_packages ;;
  test) stack_packages; test_packages ;;
  *) log "usage: $0 uv|stack|test" >&2; exit 2 ;;
esac
