#!/usr/bin/env bash
# `ansible-test sanity` on the xdpcap.capture collection, with this project's .venv.
#
# ansible-test builds a virtualenv per test and bootstraps pip in it with a script it
# downloads from its own CI file host; on machines that reach only the package index, a
# stand-in (pip from the interpreter's ensurepip, then `pip install` from the index) is put
# in a throw-away HOME, so nothing under the real ~/.ansible changes. ansible-test runs pip
# with PIP_CONFIG_FILE=/dev/null: the stand-in passes the system CA bundle itself.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
home=$(mktemp -d)
trap 'rm -rf "$home" "$root/ansible_collections/xdpcap/capture/tests/output"' EXIT
mkdir -p "$home/.ansible/test/cache"
for version in 24_2 25_0 25_1; do
  cat >"$home/.ansible/test/cache/get_pip_$version.py" <<'PY'
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
cert = "/etc/ssl/certs/ca-certificates.crt"
extra = ["--cert", cert] if os.path.exists(cert) else []
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *extra, *args]))
PY
done
cd ansible_collections/xdpcap/capture
HOME=$home "$root/.venv/bin/ansible-test" sanity --python "${PYTHON_VERSION:-3.11}" "$@"
