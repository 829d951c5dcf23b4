"""Contract: the learning core never pulls in the Kafka client."""

from __future__ import annotations

import subprocess
import sys


def test_core_import_does_not_import_confluent_kafka() -> None:
    code = ("import sys, stream_app.core; "
            "bad = [m for m in sys.modules if m.startswith('confluent_kafka')]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
