"""Which process is the local broker (its pid file, its command line), how a test broker dies
with its caller, and one start or stop at a time.

A pid file outlives its process (a crash, a reboot), and the pid may then
belong to anything: `broker stop` would signal it and `status` report it. So
the broker is recognised by its command line, and a state folder's starts and
stops take a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

MAIN_CLASS = "kafka.Kafka"


def is_broker(pid: int, props: Path) -> bool:
    """Whether `pid` is a live broker running `props` (its server.properties).

    Where /proc exists, the process must be java running `MAIN_CLASS` with
    that file and not a zombie; elsewhere (macOS) the pid file is trusted.
    """
    if not pid_alive(pid):
        return False
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes()
        for _ in range(20):  # empty for a moment while the process is still exec-ing
            if cmdline:
                break
            time.sleep(0.05)
            cmdline = (proc / "cmdline").read_bytes()
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    args = cmdline.split(b"\0")
    return state != "Z" and MAIN_CLASS.encode() in args and str(props).encode() in args


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """One start or stop at a time per state folder: two starts at once both wiped
    `data/`, launched a broker, and left one that no pid file named."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new one: the topics' data
    with (state_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def recorded_pid(pid_file: Path) -> int | None:
    """The pid file's pid; None when there is none, or no usable one: 0 or -1 would name a
    process group to kill(), and a pid past the kernel's range made kill() overflow."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if 0 < pid <= 2**22 else None  # Linux's pid_max is at most 2**22


@functools.cache
def pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig TERM`, if this `setpriv` has the option (util-linux 2.33, 2018,
    and later); an older one would make every start fail, so it is tried once first."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    prefix = [setpriv, "--pdeathsig", "TERM"]
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10,  # noqa: S603
                            check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else []
