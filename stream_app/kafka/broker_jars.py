"""The broker's jars: resolved once from Maven Central into a cache outside the clone.

`KAFKA_HOME` (an unpacked Kafka distribution) is used instead when set.
"""

from __future__ import annotations

import fcntl
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
MVN_TRIES = 3
MVN_TIMEOUT_S = 900.0
"""One try's limit: the jars are ~100 MB; each try goes on from what ~/.m2 already holds."""
MVN_READ_TIMEOUT_MS = 60_000
"""Maven 3.8 waits 30 minutes for a stalled response by default, printing nothing."""
COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
"""Named in full: a bare `dependency:` takes the version Maven's own version defaults to,
so the same POM resolved differently on another Maven."""


def ensure_jars(cache_dir: Path, kafka_home: Path | None) -> Path:
    """Return the folder of broker jars, resolving them from Maven Central once.

    The folder is named by the digest of the POM it was resolved from: clones with
    different POMs each get their own, rather than one replacing the jars under the
    other's running broker, whose JVM opens jars lazily. Its `.complete` holds that
    digest and is written last, so an interrupted resolve is never trusted.
    """
    if kafka_home is not None:
        return kafka_home / "libs"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    libs = cache_dir / f"kafka-{KAFKA_VERSION}-{digest[:12]}" / "libs"
    if _complete(libs, digest):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    # One resolver at a time (a test run and a demo started together): a second one would
    # replace the folder under the first one's broker, whose JVM opens jars lazily.
    with (libs.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(libs, digest):  # another process may have resolved them meanwhile
            for stale in libs.parent.glob("libs-*"):  # what a killed resolve left
                shutil.rmtree(stale, ignore_errors=True)
            _resolve(libs, digest)
    return libs


def _complete(libs: Path, digest: str) -> bool:
    done = libs / ".complete"
    return done.exists() and done.read_text().strip() == digest


def _resolve(libs: Path, digest: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is not on PATH; it fetches the Kafka broker jars from Maven "
            "Central. Install it (apt-get install maven), or set KAFKA_HOME to a Kafka "
            "distribution, or pass --bootstrap-servers of a running broker"
        )
    tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    log.info("resolving Kafka %s broker jars with Maven into %s", KAFKA_VERSION, libs)
    timeouts = [f"-Dmaven.wagon.rto={MVN_READ_TIMEOUT_MS}",  # Maven 3.8's wagon transport
                f"-Daether.connector.requestTimeout={MVN_READ_TIMEOUT_MS}",  # newer ones
                f"-Daether.connector.connectTimeout={MVN_READ_TIMEOUT_MS // 2}"]
    cmd = [mvn, "-q", "-B", *timeouts, "-f", str(POM), COPY_GOAL,
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    try:
        _copy_dependencies(cmd, tmp)
        (tmp / ".complete").write_text(digest)
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed


def _copy_dependencies(cmd: list[str], tmp: Path) -> None:
    failure = ""
    for attempt in range(1, MVN_TRIES + 1):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,  # noqa: S603
                                  timeout=MVN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            failure = f"mvn did not finish within {MVN_TIMEOUT_S:.0f}s"
        else:
            if proc.returncode == 0:
                break
            failure = f"mvn exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        log.warning("resolving the Kafka jars, try %d of %d failed: %s", attempt, MVN_TRIES,
                    failure.splitlines()[0])
    else:
        raise BrokerError(f"could not resolve the Kafka jars from Maven Central in {MVN_TRIES} "
                          f"tries (set KAFKA_HOME to a Kafka distribution to skip this); last: "
                          f"{failure}")
