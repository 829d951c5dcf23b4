"""Open plain or gzip-compressed text files the same way."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Text handle on `path`, transparently gunzipping `*.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return path.open("r", encoding=encoding, newline="")
