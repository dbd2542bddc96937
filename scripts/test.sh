#!/usr/bin/env bash
# Installs the project with its test tools into .venv and Grafana's frontend packages into
# crmsync_testing/frontend/node_modules, then runs ruff, mypy and the test suite.
# As root on a Debian machine without them, it also installs Prometheus, Alertmanager,
# docker-compose, Node.js and Chromium from Debian's packages, which the end-to-end tests run
# for real.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v node >/dev/null || missing+=(nodejs)
  command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  # Some Node.js packages bring npm along, Debian's does not.
  if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

# Grafana's own frontend code for the dashboard tests: installed again only when
# package-lock.json changed, bundled again only when older than its sources.
(
  cd crmsync_testing/frontend
  if ! sha256sum --status -c node_modules/.package-lock.sha256 2>/dev/null; then
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    sha256sum package-lock.json >node_modules/.package-lock.sha256
  fi
  node build.mjs
)

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
