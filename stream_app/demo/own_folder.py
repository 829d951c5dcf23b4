"""A folder of one run's own under a shared cache, deleted after the run.

Two demos at once shared one broker folder: the second reused the first's broker, and
the first to finish stopped it under the other. Each run now gets its own folder. A run
killed outright (SIGKILL, an OOM kill) runs no `finally`; the next run deletes what it
left. Ownership is a lock on the folder itself, held for the run's life: the kernel
drops it when the owner dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def own_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new empty folder `parent/<prefix>XXXX`, deleted on exit; first deletes the
    folders of that prefix whose owner is gone."""
    parent.mkdir(parents=True, exist_ok=True)
    # Under one lock, so a cleanup never sees a folder made but not yet locked.
    with (parent / f".{prefix}lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for old in parent.glob(f"{prefix}*"):
            if old.is_dir() and not _owned(old):
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        handle = os.open(folder, os.O_RDONLY)
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(handle)


def _owned(folder: Path) -> bool:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return True  # gone, or not ours to judge: leave it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)  # also drops a lock just taken
    return False
