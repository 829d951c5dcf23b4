"""Which process `stream-app broker` takes for its broker, without starting Kafka.

A stand-in process whose command line names `kafka.Kafka` and the state folder's
server.properties, as the broker's java does, plays the broker.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.kafka import broker, broker_process, broker_state
from stream_app.kafka.broker import BrokerSettings
from stream_app.kafka.exceptions import BrokerError

SLEEP = "import time; time.sleep(60)"


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SLEEP, *args])  # noqa: S603


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def _settings(tmp_path: Path, **kw: object) -> BrokerSettings:
    return BrokerSettings(state_dir=tmp_path / "state", port=19092, **kw)  # type: ignore[arg-type]


def _record(settings: BrokerSettings, pid: int) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.pid_file.write_text(f"{pid}\n")
    settings.bootstrap_file.write_text("127.0.0.1:19092\n")
    (settings.state_dir / "server.properties").write_text(
        "listeners=PLAINTEXT://127.0.0.1:19092\nadvertised.listeners=PLAINTEXT://127.0.0.1:19092\n")


def test_a_stale_pid_file_names_no_broker_and_stop_kills_nothing(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """After a crash the pid may be anyone's: status reported it and stop killed it."""
    settings = _settings(tmp_path)
    other = _spawn()
    procs.append(other)
    _record(settings, other.pid)
    assert broker.running(settings) is None
    assert broker.stop(settings) is False
    assert other.poll() is None, "an unrelated process was killed"


def test_our_broker_is_found_and_stopped_and_reused_only_as_asked(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    settings = _settings(tmp_path)
    props = str(settings.state_dir / "server.properties")
    ours = _spawn(broker_process.MAIN_CLASS, props)
    procs.append(ours)
    _record(settings, ours.pid)
    found = broker.running(settings)
    assert found is not None and found.pid == ours.pid
    assert broker.start(settings).pid == ours.pid  # the same settings: reused
    with pytest.raises(BrokerError, match="other settings"):  # was: a plaintext broker
        broker.start(_settings(tmp_path, sasl_user="alice", sasl_password="pw"))  # noqa: S106
    with pytest.raises(BrokerError, match="other settings"):
        broker.start(BrokerSettings(state_dir=settings.state_dir, port=19093))
    assert broker.stop(settings) is True
    assert ours.wait(timeout=10) is not None


def test_starts_and_stops_of_one_state_folder_take_turns(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    order: list[str] = []
    trying = threading.Event()

    def second() -> None:
        trying.set()
        with broker_process.locked(settings.state_dir):
            order.append("second")

    with broker_process.locked(settings.state_dir):
        waiter = threading.Thread(target=second)
        waiter.start()
        # The waiter is at the lock before the sleep starts: a thread scheduled late
        # made the order right with no lock at all (test review).
        assert trying.wait(10)
        time.sleep(0.3)  # room for a lock that does not hold to let it in
        order.append("first")
    waiter.join(timeout=5)
    assert order == ["first", "second"]


def test_a_non_ascii_sasl_password_is_refused(tmp_path: Path) -> None:
    """Kafka reads server.properties as ISO-8859-1: the broker got a garbled password."""
    with pytest.raises(BrokerError, match="ASCII"):
        _settings(tmp_path, sasl_user="alice", sasl_password="p\u00e4ss")  # noqa: S106


def test_the_controller_port_is_never_the_listener_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel handed out the same free port twice in a row, and the broker refused to
    start: "If you have two listeners on the same port then one needs to be IPv4 and the
    other IPv6"."""
    handed_out = iter([47315, 47315, 47316])

    class OneSocket:
        def __enter__(self) -> OneSocket:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

        def bind(self, _address: object) -> None:
            self.port = next(handed_out)

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

    monkeypatch.setattr(broker.socket, "socket", OneSocket)
    listener = broker.free_port()
    assert broker.free_port(other_than=listener) == 47316


def test_a_restart_on_kept_data_names_a_taken_controller_port(tmp_path: Path) -> None:
    """Kept data keeps its controller port; only the client port was checked, so a taken
    controller port surfaced as a broker that never became ready (after 90 s)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        controller = taken.getsockname()[1]
        client = broker.free_port(other_than=controller)
        settings = _settings(tmp_path, keep_data=True)
        (settings.state_dir / "data").mkdir(parents=True)
        (settings.state_dir / "data" / "meta.properties").write_text("cluster.id=x\n")
        (settings.state_dir / "server.properties").write_text(
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{client}\n"
            f"controller.quorum.voters=1@127.0.0.1:{controller}\n")
        with pytest.raises(BrokerError, match=f"port {controller} .*controller port"):
            broker._start(settings)  # noqa: SLF001


@pytest.mark.parametrize(("script", "expected"), [("exit 0", True), ("exit 1", False)])
def test_a_setpriv_without_pdeathsig_starts_the_broker_plainly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, expected: bool) -> None:
    """Only setpriv's presence was checked: one without --pdeathsig (util-linux before
    2.33) exits 1, and every test and benchmark broker would have failed to start."""
    fake = tmp_path / "setpriv"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    broker_process.pdeathsig_prefix.cache_clear()
    try:
        prefix = broker._death_signal(_settings(tmp_path, dies_with_caller=True))  # noqa: SLF001
        assert prefix == ([str(fake), "--pdeathsig", "TERM"] if expected else [])
        assert broker._death_signal(_settings(tmp_path)) == []  # noqa: SLF001
    finally:
        broker_process.pdeathsig_prefix.cache_clear()


def test_kafka_home_reaches_every_broker_the_package_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only `stream-app broker` read KAFKA_HOME: the demo fetched the jars with Maven even
    though its own error said to set it (helper review)."""
    (tmp_path / "kafka" / "libs").mkdir(parents=True)
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path / "kafka"))
    assert _settings(tmp_path).kafka_home == tmp_path / "kafka"
    monkeypatch.delenv("KAFKA_HOME")
    assert _settings(tmp_path).kafka_home is None


@pytest.mark.parametrize("recorded", ["0", "-1", "99999999999999999999"])
def test_a_pid_file_that_names_no_single_process_is_ignored(
        tmp_path: Path, recorded: str) -> None:
    """0 and -1 name process groups to kill(), and a pid past the kernel's range made
    `broker status` and `stop` end in an OverflowError traceback (helper review)."""
    settings = _settings(tmp_path)
    _record(settings, 1)
    settings.pid_file.write_text(f"{recorded}\n")
    assert broker.running(settings) is None
    assert broker.stop(settings) is False


def test_a_state_dir_that_is_a_file_is_refused_with_its_name(tmp_path: Path) -> None:
    """`broker status --state-dir FILE` ended in a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(BrokerError, match="afile is a file, not a folder"):
        BrokerSettings(state_dir=tmp_path / "afile")


@pytest.mark.parametrize("keep_data", [True, False])
def test_a_fresh_start_in_a_folder_no_broker_left_deletes_nothing(
        tmp_path: Path, keep_data: bool) -> None:
    """A fresh start deleted <state-dir>/data wherever it was: `--state-dir ~` would have
    deleted ~/data (security review). Refused before anything is touched."""
    settings = _settings(tmp_path, keep_data=keep_data)
    (settings.state_dir / "data").mkdir(parents=True)
    (settings.state_dir / "data" / "important.txt").write_text("precious")
    (settings.state_dir / "server.properties").write_text("log.dirs=/var/lib/kafka\n")
    with pytest.raises(BrokerError, match="is not an empty folder nor one a stream-app broker"):
        broker._start(settings)  # noqa: SLF001
    assert (settings.state_dir / "data" / "important.txt").read_text() == "precious"
    assert (settings.state_dir / "server.properties").read_text() == "log.dirs=/var/lib/kafka\n"


def test_a_folder_a_broker_left_is_recognised_by_its_properties(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.state_dir.mkdir(parents=True)
    broker_state.check_ours(settings.state_dir)  # empty: ours to fill
    (settings.state_dir / ".lock").write_text("")  # `start` takes it before it looks
    broker_state.check_ours(settings.state_dir)
    (settings.state_dir / "server.properties").write_text(
        broker_state.server_properties(settings, 9092, 9093))
    (settings.state_dir / "broker.log").write_text("")
    broker_state.check_ours(settings.state_dir)


def test_a_new_state_folder_is_private(tmp_path: Path) -> None:
    """The lock made the folder first, with the default mode (0755 under umask 022), so
    the 0700 asked for later did nothing and other local users could read the topics'
    data (docs check)."""
    from stream_app.kafka.broker_process import locked

    folder = tmp_path / "new" / "state"
    with locked(folder):
        pass
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_port_the_jvm_found_taken_is_picked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JVM's BindException can sit far above the error's log tail (its shutdown logs
    after it): the retry reads the whole log (review of this session's commits)."""
    settings = BrokerSettings(port=0, state_dir=tmp_path)
    tries: list[int] = []

    def start_once(s: BrokerSettings) -> broker.RunningBroker:
        tries.append(1)
        if len(tries) == 1:
            s.log_file.write_text("java.net.BindException: Address already in use\n"
                                  + "shutting down\n" * 1000)
            raise broker.BrokerError("the Kafka broker exited with 1; log ...: shutting down")
        return broker.RunningBroker(pid=1, bootstrap_servers="127.0.0.1:1", log_file=s.log_file)

    monkeypatch.setattr(broker, "_start", start_once)
    assert broker.start(settings).bootstrap_servers == "127.0.0.1:1" and len(tries) == 2
    tries.clear()
    fixed = BrokerSettings(port=9092, state_dir=tmp_path)  # a port asked for: no retry
    with pytest.raises(broker.BrokerError):
        broker.start(fixed)
    assert len(tries) == 1
