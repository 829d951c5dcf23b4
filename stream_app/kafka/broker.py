"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, for laptops and CI.

No Docker and no download outside Maven Central: the official broker jars
(`org.apache.kafka:kafka_2.13`) are resolved once with `mvn
dependency:copy-dependencies` into a cache outside the clone, then the broker
runs as `java -cp 'libs/*' kafka.Kafka server.properties` after a KRaft storage
format. `KAFKA_HOME` (a Kafka distribution) is used instead of Maven when set.

The state folder holds `server.properties`, the data, `broker.pid` and
`broker.log`, so `stop` and `status` work from another process.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stream_app.kafka.broker_jars import ensure_jars
from stream_app.kafka.broker_process import (
    MAIN_CLASS,
    is_broker,
    locked,
    pdeathsig_prefix,
    pid_alive,
    recorded_pid,
)
from stream_app.kafka.broker_state import (
    LOG4J,
    check_ours,
    kept_port,
    port_in_properties,
    server_properties,
)
from stream_app.kafka.exceptions import BrokerError

log = logging.getLogger(__name__)

STORAGE_TOOL = "kafka.tools.StorageTool"


CACHE_ENV = "STREAM_APP_CACHE_DIR"


def default_cache_dir() -> Path:
    """`STREAM_APP_CACHE_DIR`, else ~/.cache/stream-app: `make CACHE=DIR` sets the variable,
    so the broker jars (and the demo's and the local broker's state) follow the venv there."""
    given = os.environ.get(CACHE_ENV, "")
    return Path(given).expanduser().absolute() if given else Path.home() / ".cache" / "stream-app"


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """Where the local broker keeps its jars and state, and how it listens.

    `port=0` picks a free port (tests). `extra_properties` are appended to the
    generated server.properties. `keep_data=True` restarts on the state folder's
    existing data and ports (same `server.properties`, no format) when there is
    one, so a stopped or killed broker comes back with its topics, offsets and
    transactions (reliability tests); by default every start is a fresh cluster.

    `sasl_user`/`sasl_password` make the client listener SASL_PLAINTEXT with the
    PLAIN mechanism and that one user (the broker talks to itself as that user
    too): clients need `security.protocol=SASL_PLAINTEXT`,
    `sasl.mechanisms=PLAIN` and the credentials. The password is written only
    to `server.properties` (mode 0600); Kafka logs it as `[hidden]`.

    `dies_with_caller=True` (tests, benchmarks) has the kernel SIGTERM the broker
    when the thread that started it dies, even by SIGKILL, so a killed test run
    leaves no broker behind (Linux, through util-linux's `setpriv`; elsewhere it
    is ignored). By default the broker outlives the command that started it.
    """

    cache_dir: Path = field(default_factory=default_cache_dir)
    state_dir: Path = field(default_factory=lambda: default_cache_dir() / "broker")
    port: int = 9092
    kafka_home: Path | None = field(default_factory=lambda: _kafka_home(os.environ))
    heap: str = "768m"
    start_timeout_s: float = 90.0
    extra_properties: tuple[tuple[str, str], ...] = ()
    keep_data: bool = False
    sasl_user: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    dies_with_caller: bool = False

    def __post_init__(self) -> None:
        # Absolute: the broker's command line names its server.properties, which is how
        # `running` and `stop` recognise it from any working directory.
        object.__setattr__(self, "state_dir", self.state_dir.expanduser().absolute())
        if (self.sasl_user is None) != (self.sasl_password is None):
            raise BrokerError("broker SASL needs both a user and a password "
                              "(--sasl-user and --sasl-password)")
        if self.sasl_user is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}",
                                                           self.sasl_user):
            raise BrokerError(f"broker sasl_user must be 1-100 of [A-Za-z0-9._-], "
                              f"got {self.sasl_user!r}")
        if self.sasl_password is not None and (not self.sasl_password
                                               or re.search(r'["\\\s;]', self.sasl_password)
                                               or not self.sasl_password.isascii()):
            raise BrokerError("broker sasl_password must be non-empty ASCII, without quotes, "
                              "backslashes, semicolons or spaces (it goes into a JAAS line of "
                              "server.properties, which Kafka reads as ISO-8859-1)")
        if not 0 <= self.port <= 65535:
            raise BrokerError(f"broker.port must be in 0..65535, got {self.port}")
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise BrokerError(f"broker --state-dir {self.state_dir} is a file, not a folder")
        if self.kafka_home is not None and not (self.kafka_home / "libs").is_dir():
            raise BrokerError(
                f"KAFKA_HOME={self.kafka_home} has no libs/ folder: point it at an "
                "unpacked Apache Kafka distribution, or unset it to use the Maven jars"
            )

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def bootstrap_file(self) -> Path:
        return self.state_dir / "bootstrap"

    def client_settings(self) -> dict[str, str]:
        """librdkafka settings a client needs for this broker (SASL or none)."""
        if self.sasl_user is None or self.sasl_password is None:
            return {}
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
                "sasl.username": self.sasl_user, "sasl.password": self.sasl_password}


@dataclass(frozen=True, slots=True)
class RunningBroker:
    pid: int
    bootstrap_servers: str
    log_file: Path


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "java is not on PATH; the local Kafka broker needs Java 17+ "
            "(apt-get install openjdk-17-jre-headless), or pass --bootstrap-servers "
            "of a running broker"
        )
    return java


def free_port(*, other_than: int = 0) -> int:
    """A port free on 127.0.0.1 right now (its user binds it a moment later), and not
    `other_than`: the kernel may hand out a port it just returned again, and a broker
    whose listener and controller got the same one failed to start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != other_than:
            return port


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def running(settings: BrokerSettings) -> RunningBroker | None:
    """The broker this state folder started, if its process is still alive."""
    pid = recorded_pid(settings.pid_file)
    try:
        bootstrap = settings.bootstrap_file.read_text().strip()
    except FileNotFoundError:
        return None
    if pid is None or not is_broker(pid, settings.state_dir / "server.properties"):
        return None
    return RunningBroker(pid=pid, bootstrap_servers=bootstrap, log_file=settings.log_file)


PORT_TRIES = 3
"""Starts of a broker on picked ports (`port=0`) before a taken port is an error."""


def start(settings: BrokerSettings) -> RunningBroker:
    """Start the broker (or return the one already running from this state folder, if it
    listens as asked)."""
    with locked(settings.state_dir):
        existing = running(settings)
        if existing is not None:
            _check_same(existing, settings)
            return existing
        for attempt in range(2, PORT_TRIES + 1):
            try:
                return _start(settings)
            except BrokerError as exc:
                # A free port is free when picked, and bound by the JVM seconds later:
                # another process may take it first (tests in parallel, CI neighbours).
                if settings.port or settings.keep_data \
                        or not ("already in use" in str(exc) or _bind_failed(settings)):
                    raise
                log.warning("the port picked for the broker was taken before it could bind "
                            "it; trying another (%d of %d)", attempt, PORT_TRIES)
        return _start(settings)


def _bind_failed(settings: BrokerSettings) -> bool:
    """Whether the broker's log says its port was taken (a JVM BindException), anywhere: the
    shutdown it logs after may push it out of the error's tail."""
    try:
        return "Address already in use" in settings.log_file.read_text(errors="replace")
    except OSError:
        return False


def _check_same(existing: RunningBroker, settings: BrokerSettings) -> None:
    """A running broker is reused only if it is what was asked for: a SASL start must not
    return a plaintext broker, nor an explicit port another one."""
    props = (settings.state_dir / "server.properties").read_text()
    sasl = "SASL_PLAINTEXT://" in props
    port = int(existing.bootstrap_servers.rsplit(":", 1)[1])
    if sasl != (settings.sasl_user is not None) or settings.port not in (0, port):
        raise BrokerError(
            f"a broker started with other settings is running from {settings.state_dir} "
            f"(port {port}, {'SASL' if sasl else 'no SASL'}): stop it first "
            "(`stream-app broker stop`), or use another --state-dir")


def _start(settings: BrokerSettings) -> RunningBroker:
    java = _java()
    state = settings.state_dir
    props = state / "server.properties"
    kept = kept_port(settings)
    reuse = kept is not None
    port = kept if kept is not None else settings.port or free_port()
    if _port_in_use(port):
        raise BrokerError(
            f"port {port} on 127.0.0.1 is already in use: stop what listens there "
            f"(`ss -ltnp | grep {port}`), choose another with --port, or reuse that "
            f"broker with --bootstrap-servers 127.0.0.1:{port}"
        )
    controller = port_in_properties(props, "controller.quorum.voters") if reuse else None
    if controller is not None and _port_in_use(controller):  # kept data keeps its ports
        raise BrokerError(
            f"port {controller} on 127.0.0.1, the controller port of the broker kept in "
            f"{state}, is in use: stop what listens there (`ss -ltnp | grep {controller}`), "
            "or start with fresh data (another --state-dir)")
    if not reuse:
        check_ours(state)
    libs = ensure_jars(settings.cache_dir, settings.kafka_home)  # after the quick checks
    if not reuse:
        shutil.rmtree(state / "data", ignore_errors=True)
        state.mkdir(mode=0o700, parents=True, exist_ok=True)  # the topics' data is in it
        props.unlink(missing_ok=True)
        props.touch(mode=0o600)  # it may hold the SASL password
        props.write_text(server_properties(settings, port, free_port(other_than=port)))
    (state / "log4j.properties").write_text(LOG4J)
    classpath = f"{libs}/*"
    jvm = [java, f"-Xmx{settings.heap}", "-Xms128m", "-XX:+UseG1GC",
           f"-Dlog4j.configuration=file:{state / 'log4j.properties'}",
           f"-Dkafka.logs.dir={state}", "-cp", classpath]
    # Step 1. Format KRaft storage with a fresh cluster id (base64url of a UUID),
    # unless we restart on kept data (same cluster id, same ports).
    if not reuse:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # a leading '-' would be read as a flag by the tool
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(  # noqa: S603
            [*jvm, STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(props),
             "--ignore-formatted"],
            capture_output=True, text=True, check=False,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"kafka storage format failed:\n{fmt.stdout[-2000:]}"
                              f"{fmt.stderr[-2000:]}")
    # Step 2. Start the broker detached, so it outlives this CLI call. A fresh
    # cluster starts a fresh log; a restart on kept data appends to it.
    with settings.log_file.open("ab" if reuse else "wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            [*_death_signal(settings), *jvm, MAIN_CLASS, str(props)], stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "STREAM_APP_BROKER_SASL_PASSWORD"},
        )
    bootstrap = f"127.0.0.1:{port}"
    settings.pid_file.write_text(f"{proc.pid}\n")
    settings.bootstrap_file.write_text(f"{bootstrap}\n")
    # Step 3. Ready means it answers metadata, not merely that the port is open.
    try:
        _wait_ready(proc, bootstrap, settings)
    except BaseException:  # Ctrl-C or SIGTERM while waiting too: leave no broker behind
        _stop(settings)
        raise
    return RunningBroker(pid=proc.pid, bootstrap_servers=bootstrap, log_file=settings.log_file)


def _kafka_home(env: Mapping[str, str]) -> Path | None:
    """`KAFKA_HOME`, an unpacked Kafka distribution whose jars replace Maven's, for every
    broker this package starts (the CLI's, the demo's, the tests')."""
    return Path(env["KAFKA_HOME"]) if env.get("KAFKA_HOME") else None


def _death_signal(settings: BrokerSettings) -> list[str]:
    """`setpriv` execs the JVM (same pid) with the parent-death signal set; a Popen
    preexec_fn would do the same without it, but is unsafe once client threads run."""
    return pdeathsig_prefix() if settings.dies_with_caller else []


def _wait_ready(proc: subprocess.Popen[bytes], bootstrap: str, settings: BrokerSettings) -> None:
    from stream_app.kafka.admin import wait_for_broker

    deadline = time.monotonic() + settings.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = settings.log_file.read_text(errors="replace")[-3000:]
            raise BrokerError(f"the Kafka broker exited with {proc.returncode}; "
                              f"log {settings.log_file}:\n{tail}")
        if wait_for_broker(bootstrap, timeout_s=2.0, raise_on_timeout=False,
                           client=settings.client_settings()):
            return
    raise BrokerError(f"the Kafka broker did not answer within {settings.start_timeout_s:.0f}s; "
                      f"see {settings.log_file}")


def stop(settings: BrokerSettings, timeout_s: float = 30.0) -> bool:
    """SIGTERM the broker (clean shutdown), SIGKILL after `timeout_s`. True if one ran."""
    with locked(settings.state_dir):
        return _stop(settings, timeout_s)


def _stop(settings: BrokerSettings, timeout_s: float = 30.0) -> bool:
    pid = recorded_pid(settings.pid_file)
    stopped = False
    if pid is not None and is_broker(pid, settings.state_dir / "server.properties"):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            log.warning("broker pid=%d ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
            os.kill(pid, signal.SIGKILL)
        stopped = True
    settings.pid_file.unlink(missing_ok=True)
    settings.bootstrap_file.unlink(missing_ok=True)
    return stopped
