#!/usr/bin/env bash
# What the suite needs from Debian, beyond PyPI (run by the README's test command, after the venv exists):
# - chromium: the console's browser tests (tests/browser, Playwright), installed when missing;
# - promtool: the alert rules' tests (tests/deploy/test_alert_rules.py), taken out of Debian's prometheus
#   package into .venv/bin. Only that binary: installing the package would start a Prometheus server.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium > /dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium
fi
if ! command -v promtool > /dev/null && [ ! -x .venv/bin/promtool ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # apt's sandbox warning (the download dir is not _apt's) is not an error; a stale index is retried once.
    (cd "$work" && (apt-get download -qq prometheus 2> /dev/null || (apt-get update -qq && apt-get download -qq prometheus)))
    dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
    install -m 0755 "$work/usr/bin/promtool" .venv/bin/promtool
fi
