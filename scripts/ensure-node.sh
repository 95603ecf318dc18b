#!/bin/sh
# The Omnitool client test runs a Node script, as Omnitool's users do: install Node.js from Debian when absent.
set -e
if command -v node >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "Node.js is missing and cannot be installed here (needs root and apt-get); install nodejs" >&2
    exit 1
fi
echo "Installing Node.js from Debian's packages (first run only)..."
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs >/dev/null
node --version
