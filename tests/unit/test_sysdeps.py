"""scripts/sysdeps.sh against stand-in `id`, `sudo`, `apt-get` and `systemctl`.

The script runs as root or with password-less sudo on a fresh machine, where
nothing here can run it for real; the stand-ins log what it asks of them, and
PATH holds nothing else, so every tool counts as missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sysdeps.sh"
LOGGING = '#!/bin/bash\necho "${0##*/} $*" >> "$LOG"\n'
LOCK = "-o DPkg::Lock::Timeout=600"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """Stand-ins that log, `id -u` 0 (root), and the real `env`, `sleep` and `wc`."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("apt-get", "systemctl", "sudo"):
        _script(d / name, LOGGING)
    _script(d / "id", "#!/bin/bash\necho 0\n")
    for name in ("env", "sleep", "wc"):
        real = shutil.which(name)
        assert real, name
        (d / name).symlink_to(real)
    return d


def _script(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def run(bin_dir: Path, *tools: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = bin_dir.parent / "log"
    done = subprocess.run(["/bin/bash", str(SCRIPT), *tools], capture_output=True, text=True,
                          env={"PATH": str(bin_dir), "LOG": str(log)}, timeout=30)
    return done, log.read_text().splitlines() if log.exists() else []


def test_missing_tools_are_installed_in_one_apt_call_without_recommends(bin_dir: Path) -> None:
    done, calls = run(bin_dir, "java", "promtool", "prometheus")
    assert done.returncode == 0, done.stderr
    assert calls[0] == f"apt-get {LOCK} update -q"
    # promtool and prometheus are one package, asked for once.
    assert calls[1] == (f"apt-get {LOCK} install -y -q --no-install-recommends "
                        "default-jre-headless prometheus")


def test_the_prometheus_service_the_package_starts_is_stopped_and_disabled(
        bin_dir: Path) -> None:
    """Debian's package left a Prometheus running on :9090 on the machine after `make test`."""
    done, calls = run(bin_dir, "prometheus")
    assert done.returncode == 0, done.stderr
    assert calls[-2:] == ["systemctl is-enabled --quiet prometheus",
                          "systemctl disable --now prometheus"]


def test_no_service_is_touched_when_prometheus_was_not_installed_here(bin_dir: Path) -> None:
    done, calls = run(bin_dir, "java")
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c.startswith("systemctl")]


def test_a_present_tool_installs_nothing(bin_dir: Path) -> None:
    _script(bin_dir / "java", "#!/bin/bash\n")
    done, calls = run(bin_dir, "java")
    assert done.returncode == 0 and calls == []


def test_without_root_or_sudo_it_stops_and_prints_the_command(bin_dir: Path) -> None:
    _script(bin_dir / "id", "#!/bin/bash\necho 1000\n")
    os.remove(bin_dir / "sudo")
    done, calls = run(bin_dir, "java", "kcat")
    assert done.returncode == 1 and calls == []
    assert ("sudo apt-get update && sudo apt-get install -y --no-install-recommends "
            "default-jre-headless kcat" in done.stderr)
    assert "systemctl" not in done.stderr
    done, _ = run(bin_dir, "prometheus")
    assert "sudo systemctl disable --now prometheus" in done.stderr


def test_password_less_sudo_runs_apt_through_sudo(bin_dir: Path) -> None:
    _script(bin_dir / "id", "#!/bin/bash\necho 1000\n")
    _script(bin_dir / "sudo", '#!/bin/bash\necho "sudo $*" >> "$LOG"\n'
            '[ "$1" = -n ] && shift; [ "$1" = true ] && exit 0; "$@"\n')
    done, calls = run(bin_dir, "kcat")
    assert done.returncode == 0, done.stderr
    assert f"sudo -n apt-get {LOCK} update -q" in calls
    assert (f"sudo -n env DEBIAN_FRONTEND=noninteractive apt-get {LOCK} "
            "install -y -q --no-install-recommends kcat") in calls


def test_an_unknown_tool_is_refused(bin_dir: Path) -> None:
    done, _ = run(bin_dir, "javac")
    assert done.returncode != 0 and "unknown tool 'javac'" in done.stderr


@pytest.mark.parametrize("failures", [2, 10])
def test_apt_update_is_tried_ten_times_30_s_apart(bin_dir: Path, failures: int) -> None:
    """A fresh VM's unattended upgrades hold apt's lists lock for minutes after boot."""
    count = bin_dir.parent / "updates"
    _script(bin_dir / "apt-get", LOGGING + f'if [ "$3" = update ]; then echo x >> {count}; '
            f'[ "$(wc -l < {count})" -gt {failures} ] || exit 100; fi\n')
    _script(bin_dir / "sleep", LOGGING)
    done, calls = run(bin_dir, "kcat")
    updates = [c for c in calls if c.endswith("update -q")]
    installs = [c for c in calls if " install " in c]
    if failures < 10:
        assert done.returncode == 0, done.stderr
        assert len(updates) == failures + 1 and len(installs) == 1
        assert calls.count("sleep 30") == failures
    else:
        assert done.returncode == 1 and not installs
        assert len(updates) == 10 and calls.count("sleep 30") == 9
