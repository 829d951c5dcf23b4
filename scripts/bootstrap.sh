#!/usr/bin/env bash
# Create (or update) the project venv outside the clone and install stream_app
# into it, editable, with the test and demo extras. Safe to re-run; pip's cache under
# ~/.cache/pip keeps the multi-GB torch wheel, so reinstalls are quick.
set -euo pipefail
venv="${1:?usage: bootstrap.sh VENV_DIR}"
here="$(cd "$(dirname "$0")/.." && pwd)"

need() { command -v "$1" >/dev/null 2>&1 || { echo "bootstrap: $1 is required: $2" >&2; exit 2; }; }
need python3 "install Python 3.11+"
python3 - <<'PY' || { echo "bootstrap: Python >= 3.11 is required" >&2; exit 2; }
import sys; sys.exit(sys.version_info < (3, 11))
PY

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating venv $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
echo "bootstrap: installing stream_app (first time downloads torch, several GB; cached after)"
"$venv/bin/pip" install -q -e "$here[test,demo]"
