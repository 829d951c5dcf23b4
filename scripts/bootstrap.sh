#!/usr/bin/env bash
# Create (or update) the project venv outside the clone and install stream_app
# into it, editable, with the test and demo extras, at the versions of
# constraints.txt. Safe to re-run; pip's cache under
# ~/.cache/pip keeps the multi-GB torch wheel, so reinstalls are quick.
set -euo pipefail
venv="${1:?usage: bootstrap.sh VENV_DIR}"
here="$(cd "$(dirname "$0")/.." && pwd)"

need() { command -v "$1" >/dev/null 2>&1 || { echo "bootstrap: $1 is required: $2" >&2; exit 2; }; }
need python3 "install Python 3.11+"
python3 - <<'PY' || { echo "bootstrap: Python >= 3.11 is required" >&2; exit 2; }
import sys; sys.exit(sys.version_info < (3, 11))
PY

# A venv without pip is what a failed `python3 -m venv` leaves (Debian without
# python3-venv): make it again rather than stop at a missing pip on every run.
if [ ! -x "$venv/bin/pip" ]; then
  if [ -f "$venv/pyvenv.cfg" ]; then
    echo "bootstrap: $venv has no pip; making it again"
    rm -rf "$venv"
  fi
  echo "bootstrap: creating venv $venv"
  python3 -m venv "$venv" || {
    if [ -f "$venv/pyvenv.cfg" ]; then rm -rf "$venv"; fi
    echo "bootstrap: python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 2
  }
  "$venv/bin/pip" install -q --upgrade pip
fi
echo "bootstrap: installing stream_app (first time downloads torch, several GB; cached after)"
"$venv/bin/pip" install -q -c "$here/constraints.txt" -e "$here[test,demo]"
