#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests on both stores.
# The Redis tests start their own redis-server on a free port; it is installed from
# Debian's packages first when missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server (the Redis tests start their own)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

cargo test --all-targets "$@"
