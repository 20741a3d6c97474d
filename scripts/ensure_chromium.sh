#!/usr/bin/env bash
# Debian's Chromium for the browser test (tests/test_browser.py drives it with Playwright, which never
# downloads a browser of its own here). Installs it with apt-get when it is missing and this user may;
# otherwise says so, and that one test is skipped with the same message.
set -u
CHROMIUM=${M3LITE_CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if command -v apt-get > /dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2> /dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "Installing Debian's chromium for the browser test (apt-get, once)..."
    $SUDO apt-get update -qq > /dev/null && \
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium > /dev/null && [ -x "$CHROMIUM" ] && exit 0
  fi
fi
echo "Note: no Chromium at $CHROMIUM and it could not be installed here (needs apt-get as root or with sudo);"
echo "      tests/test_browser.py will be skipped. Install chromium, or point M3LITE_CHROMIUM at one."
exit 0
