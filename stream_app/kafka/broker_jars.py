"""The broker's jars: resolved once from Maven Central into a cache outside the clone.

`KAFKA_HOME` (an unpacked Kafka distribution) is used instead when set.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from stream_app.kafka.exceptions import BrokerError

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("broker-pom.xml")


def ensure_jars(cache_dir: Path, kafka_home: Path | None) -> Path:
    """Return the folder of broker jars, resolving them from Maven Central once.

    The folder's `.complete` holds the digest of the POM it was resolved from, so a
    changed POM (another dependency version) resolves them again.
    """
    if kafka_home is not None:
        return kafka_home / "libs"
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    done = libs / ".complete"
    if done.exists() and done.read_text().strip() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is not on PATH; it fetches the Kafka broker jars from Maven "
            "Central. Install it (apt-get install maven), or set KAFKA_HOME to a Kafka "
            "distribution, or pass --bootstrap-servers of a running broker"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    log.info("resolving Kafka %s broker jars with Maven into %s", KAFKA_VERSION, libs)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(f"mvn could not resolve the Kafka jars:\n{proc.stdout[-2000:]}"
                          f"{proc.stderr[-2000:]}")
    (tmp / ".complete").write_text(digest)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs
