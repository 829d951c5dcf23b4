"""Open plain or gzip-compressed files the same way."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Text handle on `path`, transparently gunzipping `*.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return path.open("r", encoding=encoding, newline="")


def open_binary(path: Path) -> IO[bytes]:
    """Byte handle on `path`, transparently gunzipping `*.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile reads bytes
    return path.open("rb")
