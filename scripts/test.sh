#!/usr/bin/env bash
# Installs the project with its test tools into .venv, then runs ruff, mypy and the test suite.
# As root on a Debian machine without them, it also installs Prometheus, Alertmanager and
# docker-compose from Debian's packages, which the end-to-end tests run for real.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && ! { command -v promtool && command -v prometheus-alertmanager && command -v docker-compose; } >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager docker-compose >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
