#!/usr/bin/env bash
# The system tools a make target needs, installed when missing.
#
#   bash scripts/sysdeps.sh java mvn kcat promtool
#
# Debian packages via apt-get, as root or with password-less sudo; otherwise
# it stops and prints the one command that installs them, so a target never
# runs half-equipped (a test that cannot find kcat or promtool fails, by design).
set -euo pipefail

declare -A PACKAGE=(
  [java]=default-jre-headless   # the Kafka broker
  [mvn]=maven                   # fetches the broker jars from Maven Central
  [kcat]=kcat                   # an independent client in the contract tests
  [promtool]=prometheus         # checks the alert rules and dashboard queries
  [prometheus]=prometheus       # scrapes the processes in an integration test
  [venv]=python3-venv           # `python3 -m venv` (Debian splits it from python3)
)

have() {
  case "$1" in
    venv) python3 -c "import ensurepip" >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null ;;
  esac
}

missing=()
for tool in "$@"; do
  package=${PACKAGE[$tool]:?"sysdeps: unknown tool '$tool'"}
  have "$tool" && continue
  [[ " ${missing[*]:-} " == *" $package "* ]] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
prometheus_missing=false
[[ " ${missing[*]} " == *" prometheus "* ]] && prometheus_missing=true

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "sysdeps: missing ${missing[*]}; install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  if $prometheus_missing; then
    echo "  sudo systemctl disable --now prometheus  # the package's service; tests run their own" >&2
  fi
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "sysdeps: missing ${missing[*]} and no apt-get here; install them with your" \
       "package manager (Java 17+, Maven, kcat, Prometheus)" >&2
  exit 1
fi
echo "sysdeps: installing ${missing[*]}"
# A fresh VM's unattended upgrades hold apt's locks for minutes after boot: wait for
# dpkg's (install), and try `update`, whose lists lock that setting may not cover, again.
lock=(-o DPkg::Lock::Timeout=600)
for try in 1 2 3 4 5 6 7 8 9 10; do
  "${sudo[@]}" apt-get "${lock[@]}" update -q && break
  [ "$try" -lt 10 ] || exit 1
  echo "sysdeps: apt-get update failed (another apt holding its lock?); again in 30 s" >&2
  sleep 30
done
# No recommended extras: Debian's prometheus package recommends node-exporter, a daemon.
# Through env: sudo drops the caller's environment, DEBIAN_FRONTEND included.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -q \
  --no-install-recommends \
  "${missing[@]}"
# Debian's prometheus package enables and starts a system service on :9090. The tests
# run their own Prometheus on free ports; a tool installed for them leaves no daemon.
if $prometheus_missing && command -v systemctl >/dev/null \
    && systemctl is-enabled --quiet prometheus 2>/dev/null; then
  echo "sysdeps: stopping and disabling the prometheus service the package started" \
       "(stream_app's tests run their own)"
  "${sudo[@]}" systemctl disable --now prometheus || true
fi
