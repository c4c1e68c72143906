#!/usr/bin/env bash
# Installs moto's S3-compatible server (PyPI, about 45 s and 300 MB) into target/moto, where the
# remote-cache tests (tests/remote.rs) find it. Without it they test the folder remote only.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x target/moto/bin/moto_server ]; then
  exit 0
fi
python3 -m venv target/moto
target/moto/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
target/moto/bin/moto_server --version 2>/dev/null || true
