#!/usr/bin/env bash
# Create (or update) the project venv outside the clone and install stream_app
# into it, editable, with the test and demo extras, at the versions of
# constraints.txt. Safe to re-run; pip's cache under
# ~/.cache/pip keeps the multi-GB torch wheel, so reinstalls are quick.
set -euo pipefail
venv="${1:?usage: bootstrap.sh VENV_DIR}"
venv="${venv%/}"  # the lock file sits beside the venv, not in it
here="$(cd "$(dirname "$0")/.." && pwd)"

need() { command -v "$1" >/dev/null 2>&1 || { echo "bootstrap: $1 is required: $2" >&2; exit 2; }; }
need python3 "install Python 3.11+"
python3 - <<'PY' || { echo "bootstrap: Python >= 3.11 is required" >&2; exit 2; }
import sys; sys.exit(sys.version_info < (3, 11))
PY

# One install at a time into a venv (two clones, or CI jobs, sharing the cache): two
# pips at once can leave a half-written venv that the next run trusts.
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null; then  # util-linux; elsewhere (macOS), one run at a time
  exec 9>"$venv.lock"
  flock 9
fi

# A venv whose python cannot import pip is what a failed `python3 -m venv` leaves
# (Debian without python3-venv), or a cached venv whose base Python moved (another
# pyenv patch release): make it again rather than fail the same way on every run.
if ! "$venv/bin/python" -c "import pip" >/dev/null 2>&1; then
  if [ -f "$venv/pyvenv.cfg" ]; then
    echo "bootstrap: $venv has no working python with pip; making it again"
    rm -rf "$venv"
  fi
  echo "bootstrap: creating venv $venv"
  python3 -m venv "$venv" || {
    if [ -f "$venv/pyvenv.cfg" ]; then rm -rf "$venv"; fi
    echo "bootstrap: python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 2
  }
  "$venv/bin/python" -m pip install -q -c "$here/constraints.txt" --upgrade pip
fi
echo "bootstrap: installing stream_app (first time downloads torch, several GB; cached after)"
"$venv/bin/python" -m pip install -q -c "$here/constraints.txt" -e "$here[test,demo]"
# A pip killed mid-install can leave a package that pip then calls satisfied.
"$venv/bin/python" -m pip check || {
  echo "bootstrap: $venv is inconsistent (above); remove it (rm -rf $venv) and run again" >&2
  exit 2
}
"$venv/bin/python" -c "import torch, confluent_kafka, prometheus_client, orjson, stream_app"
