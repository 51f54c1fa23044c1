#!/usr/bin/env bash
# Install what the browser end-to-end test (tests/e2e/) needs, only where missing (idempotent):
#   Debian `chromium` (-> /usr/bin/chromium) and npm `playwright-core` (-> tests/e2e/node_modules).
# Playwright's own browser download is never used: it drives the system Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

apt_install() {
    # Refresh the package lists once per run, then install quietly.
    if [ -z "${_APT_UPDATED:-}" ]; then $SUDO apt-get update -q; _APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@"
}

if ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium fonts-dejavu-core
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if [ ! -f tests/e2e/node_modules/playwright-core/package.json ]; then
    # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing itself, kept for safety.
    export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
    if [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ]; then
        (cd tests/e2e && npm install --no-audit --no-fund --silent)
    else  # Debian 12's nodejs is 18: the last playwright-core that runs on it
        (cd tests/e2e && npm install --no-audit --no-fund --silent --no-save playwright-core@1.49.1)
    fi
fi
echo "e2e deps: $(command -v chromium) ($(chromium --version 2>/dev/null || echo '?')), node $(node --version)," \
     "playwright-core $(node -p "require('./tests/e2e/node_modules/playwright-core/package.json').version")"
