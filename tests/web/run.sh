#!/usr/bin/env bash
# run.sh: the browser demo's end-to-end test (make test-web): installs playwright-core with npm ci when needed, runs web.test.mjs.
# Leaves out installing Chromium and Node (tools/install-deps.sh --web); without them it says so and skips (exit 0).
set -u
cd "$(dirname "$0")"
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if ! command -v node >/dev/null; then
  echo "test-web: SKIPPED: node is not installed (tools/install-deps.sh --web installs nodejs, npm and chromium)"; exit 0
fi
if [ ! -x "$CHROMIUM" ]; then
  echo "test-web: SKIPPED: Chromium not found at $CHROMIUM (tools/install-deps.sh --web installs it)"; exit 0
fi
if [ ! -d node_modules/playwright-core ]; then
  if ! npm ci --no-audit --no-fund --loglevel=error; then
    echo "test-web: SKIPPED: npm ci could not install playwright-core (is the npm registry reachable?)"; exit 0
  fi
fi
exec node --test web.test.mjs
