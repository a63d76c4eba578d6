#!/usr/bin/env bash
# Headless Chromium and chromedriver for the cluster explorer's browser test (tests/explorer.rs).
#
# The test drives a real browser through chromedriver's WebDriver API, because the properties it
# checks (labels rendered as text, never HTML; the map drawing what the API serves) only exist in
# a real DOM. Debian's `chromium` and `chromium-driver` give /usr/bin/chromium and
# /usr/bin/chromedriver of the same version. Idempotent: installs only what is missing.
set -euo pipefail

log() { echo "chromium.sh: $*" >&2; }

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  log "already installed ($(chromedriver --version 2>/dev/null | head -n 1))"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  log "chromium or chromedriver is missing: run this as root (apt-get install chromium chromium-driver)"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log "installing chromium chromium-driver with apt-get"
apt-get update -qq
# --no-install-recommends leaves out desktop integration a headless test does not use; one small
# font stays, so the screenshot the test saves shows text rather than empty boxes.
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
for bin in chromium chromedriver; do
  command -v "$bin" >/dev/null 2>&1 || { log "$bin is still missing after apt-get install"; exit 1; }
done
log "installed ($(chromedriver --version 2>/dev/null | head -n 1))"
