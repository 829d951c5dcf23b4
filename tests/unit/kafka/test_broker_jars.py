"""Resolving the broker jars: a stalled or failing Maven is retried, then named; never a
silent 30-minute wait. A stand-in `mvn` script on PATH plays Maven."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stream_app.kafka import broker_jars
from stream_app.kafka.exceptions import BrokerError


def _fake_mvn(folder: Path, body: str) -> Path:
    """An `mvn` that counts its calls in `calls` and runs `body` (bash; $out is the
    -DoutputDirectory it was given)."""
    script = folder / "mvn"
    script.write_text("#!/usr/bin/env bash\n"
                      f'echo x >> "{folder}/calls"\n'
                      'for a in "$@"; do case "$a" in -DoutputDirectory=*) '
                      'out="${a#-DoutputDirectory=}";; esac; done\n' + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder / "calls"


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_a_failing_maven_is_tried_again_and_its_jars_kept(bin_dir: Path, tmp_path: Path) -> None:
    calls = _fake_mvn(bin_dir, f'[ $(wc -l < "{bin_dir}/calls") -lt 3 ] && exit 1\n'
                               'touch "$out/kafka.jar"')
    libs = broker_jars.ensure_jars(tmp_path / "cache", None)
    assert (libs / "kafka.jar").exists() and len(calls.read_text().split()) == 3
    assert broker_jars.ensure_jars(tmp_path / "cache", None) == libs  # cached: no fourth call
    assert len(calls.read_text().split()) == 3


def test_a_stalled_maven_is_cut_short_and_named(
        bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Maven 3.8 waits 30 minutes for a stalled mirror by default, printing nothing."""
    calls = _fake_mvn(bin_dir, "exec sleep 30")
    monkeypatch.setattr(broker_jars, "MVN_TIMEOUT_S", 0.5)
    with pytest.raises(BrokerError, match="in 3 tries .*KAFKA_HOME.*did not finish within"):
        broker_jars.ensure_jars(tmp_path / "cache", None)
    assert len(calls.read_text().split()) == 3
    assert not list((tmp_path / "cache").glob("kafka-*/libs*"))  # nothing half-made is kept


def test_two_processes_resolving_at_once_run_maven_once(bin_dir: Path, tmp_path: Path) -> None:
    """Without a lock both resolved, and the second replaced the folder the first one's broker
    was reading its jars from."""
    calls = _fake_mvn(bin_dir, 'sleep 1; touch "$out/kafka.jar"')
    code = ("import sys; from pathlib import Path; from stream_app.kafka import broker_jars; "
            "print(broker_jars.ensure_jars(Path(sys.argv[1]), None))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache")],  # noqa: S603
                              env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    assert len(calls.read_text().split()) == 1


def test_a_resolve_cut_short_leaves_nothing_and_a_killed_ones_leftovers_go(
        bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any exception inside the resolve (Ctrl-C included) used to leave its ~100 MB
    `libs-*` folder in the cache for good, as does a resolve killed outright."""
    _fake_mvn(bin_dir, 'touch "$out/kafka.jar"')

    def interrupted(cmd: list[str], tmp: Path) -> None:
        (tmp / "part.jar").touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(broker_jars, "_copy_dependencies", interrupted)
    with pytest.raises(KeyboardInterrupt):
        broker_jars.ensure_jars(tmp_path / "cache", None)
    folder = next((tmp_path / "cache").glob("kafka-*"))
    assert not list(folder.glob("libs*"))
    (folder / "libs-killed").mkdir()  # what a SIGKILLed resolve leaves
    monkeypatch.undo()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    libs = broker_jars.ensure_jars(tmp_path / "cache", None)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "libs"] and libs.parent == folder


def test_another_pom_gets_its_own_folder(
        bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clones with different POMs shared one folder by Kafka version: each resolve
    replaced the jars under the other's running broker."""
    calls = _fake_mvn(bin_dir, 'touch "$out/kafka.jar"')
    first = broker_jars.ensure_jars(tmp_path / "cache", None)
    other = tmp_path / "other-pom.xml"
    other.write_text(broker_jars.POM.read_text() + "<!-- another dependency set -->\n")
    monkeypatch.setattr(broker_jars, "POM", other)
    second = broker_jars.ensure_jars(tmp_path / "cache", None)
    assert second != first and (first / "kafka.jar").exists() and (second / "kafka.jar").exists()
    assert len(calls.read_text().split()) == 2


def test_maven_is_asked_for_a_pinned_plugin_version(bin_dir: Path, tmp_path: Path) -> None:
    """A bare `dependency:copy-dependencies` takes whatever version the Maven at hand
    defaults to."""
    _fake_mvn(bin_dir, f'echo "$@" > "{bin_dir}/args"; touch "$out/kafka.jar"')
    broker_jars.ensure_jars(tmp_path / "cache", None)
    assert ":maven-dependency-plugin:3.8.1:copy-dependencies" in (bin_dir / "args").read_text()


def test_the_cache_folder_follows_the_variable_that_make_sets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test CACHE=DIR` moved the venv but left the jars (and the brokers' state) in
    ~/.cache/stream-app; the Makefile now exports STREAM_APP_CACHE_DIR, which every
    default reads, and the commands' environment check takes it as known."""
    from stream_app.config_load import check_environment
    from stream_app.kafka.broker import BrokerSettings, default_cache_dir
    from stream_app.trainer import TrainerConfig

    monkeypatch.setenv("STREAM_APP_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    settings = BrokerSettings()
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.state_dir == tmp_path / "cache" / "broker"
    check_environment({"STREAM_APP_CACHE_DIR": str(tmp_path)}, {"trainer": TrainerConfig})
    monkeypatch.setenv("STREAM_APP_CACHE_DIR", "")
    assert default_cache_dir() == Path.home() / ".cache" / "stream-app"


def test_the_makefile_exports_its_cache_folder(tmp_path: Path) -> None:
    """What a recipe's shell sees: a rule added for the test prints the variable."""
    root = Path(__file__).resolve().parents[3]
    rule = 'print-cache-env: ; @echo "$$STREAM_APP_CACHE_DIR"'
    out = subprocess.run(["make", "-s", "-C", str(root), f"CACHE={tmp_path}/c", "--eval", rule,
                          "print-cache-env"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{tmp_path}/c"
    # The variable set by the user is CACHE's default, not overridden by it.
    env = {**os.environ, "STREAM_APP_CACHE_DIR": f"{tmp_path}/mine"}
    out = subprocess.run(["make", "-s", "-C", str(root), "--eval", rule, "print-cache-env"],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == f"{tmp_path}/mine"
