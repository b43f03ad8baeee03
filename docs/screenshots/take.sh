#!/usr/bin/env bash
# Writes every dashboard page at 1280x800 (*-desktop.png) and 390x844 (*-phone.png) into
# this directory: a cakelink on a free port with a month of demo traffic, shown in a
# headless Chromium (Debian's chromium and chromium-driver, as ./test.sh installs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --test it screenshots::take_screenshots -- --ignored --exact
ls docs/screenshots/*.png
