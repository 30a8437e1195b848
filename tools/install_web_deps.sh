#!/usr/bin/env bash
# What the browser and runtime-conformance tests (tests/test_web.py) need beyond pip: Debian's chromium (driven by
# playwright through executable_path=/usr/bin/chromium), node and npm (npm fetches onnxruntime-web 1.31.1 for
# `xcompile export-web` and onnxruntime-node 1.31.1 for tools/conformance.py into ~/.cache/xcompile on first use).
# Idempotent: nothing is fetched when all three are installed (a few milliseconds).
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
