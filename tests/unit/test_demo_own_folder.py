"""Each demo run gets its own broker folder; a killed run's folder goes at the next run,
a live run's never. Owners are real processes: the lock is what the kernel drops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from stream_app.demo.own_folder import own_folder

_HOLD = ("import sys, time; from pathlib import Path; "
         "from stream_app.demo.own_folder import own_folder\n"
         "with own_folder(Path(sys.argv[1]), 'demo-broker-') as f:\n"
         "    print(f, flush=True); time.sleep(60)\n")


def _holder(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(parent)],  # noqa: S603
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_two_runs_get_two_folders_each_deleted_after(tmp_path: Path) -> None:
    with own_folder(tmp_path, "demo-broker-") as a, own_folder(tmp_path, "demo-broker-") as b:
        assert a != b and a.is_dir() and b.is_dir() and not any(a.iterdir())
        (a / "data").mkdir()
    assert not a.exists() and not b.exists()


def test_a_killed_runs_folder_goes_and_a_live_runs_stays(tmp_path: Path) -> None:
    killed, left = _holder(tmp_path)
    live, kept = _holder(tmp_path)
    try:
        (left / "data").mkdir()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        assert left.is_dir()  # no finally ran
        with own_folder(tmp_path, "demo-broker-") as mine:
            assert not left.exists() and kept.is_dir() and mine.is_dir()
    finally:
        live.kill()
        live.wait(timeout=10)
