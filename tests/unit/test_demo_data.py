"""The demo's input: MovieLens from a folder or its ratings file, the generator only when
the given path is not there (no broker)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stream_app.config import ConfigError
from stream_app.demo.data import load_input

DATA = Path(__file__).resolve().parents[1] / "data"


def test_the_ratings_file_itself_is_read_and_a_folder_without_ratings_is_refused(
        tmp_path: Path) -> None:
    """A ratings file, which `replay` takes, and a folder holding none were both replaced
    by the synthetic stream with only a note (helper review)."""
    shutil.copy(DATA / "ratings_small.dat", tmp_path / "ratings.dat")
    from_file = load_input(tmp_path / "ratings.dat", 10)
    assert from_file.note is None and "MovieLens" in from_file.description
    assert [r.event.user_id for r in from_file.records if r.event] == \
        [r.event.user_id for r in load_input(tmp_path, 10).records if r.event]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no MovieLens ratings"):
        load_input(tmp_path / "empty", 10)
    missing = load_input(tmp_path / "not-there", 100)  # make demo without the shared data
    assert missing.note and "synthetic" in missing.description


def test_a_bad_learner_setting_stops_the_demo_before_it_starts_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The trainer child refused `-L dimm=32` after the broker, the topics and the report
    folder were set up, and the demo exited 1 rather than 2 (helper review)."""
    from stream_app.cli import main

    code = main(["demo", "-L", "dimm=32", "--bootstrap-servers", "127.0.0.1:1",
                 "--report-dir", str(tmp_path / "report")])
    assert code == 2 and "unknown learner setting(s): dimm" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("device", ["cuda:99", "tpu"])
def test_a_device_this_machine_lacks_stops_the_demo_before_it_starts_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str) -> None:
    """Only the demo's trainer child checked `--device`, after the broker and topics were up."""
    from stream_app.cli import main

    code = main(["demo", "--device", device, "--bootstrap-servers", "127.0.0.1:1",
                 "--report-dir", str(tmp_path / "report")])
    assert code == 2 and f"--device={device!r}" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(("name", "value", "says"), [
    ("STREAM_APP_LEARNER_DIMM", "3", "STREAM_APP_LEARNER_DIM"),
    ("STREAM_APP_SCORER_BATCH_MAXX", "3", "STREAM_APP_SCORER_BATCH_MAX"),
    ("STREAM_APP_TRAINER_BATCH_MAX", "0", "batch_max"),
    ("STREAM_APP_SCORER_BATCH_WAIT_MS", "soon", "STREAM_APP_SCORER_BATCH_WAIT_MS"),
])
def test_a_setting_the_demos_processes_would_refuse_stops_it_before_it_starts_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, value: str, says: str) -> None:
    """The demo checked only the shared Kafka variables; a misspelt or bad trainer, learner
    or scorer one was found by its child after the broker and topics were up (README
    review)."""
    from stream_app.cli import main

    monkeypatch.setenv(name, value)
    code = main(["demo", "--bootstrap-servers", "127.0.0.1:1",
                 "--report-dir", str(tmp_path / "report")])
    assert code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(("argv", "says"), [
    (["-L", "idle_ttl_ms=1000"], "idle_ttl_ms"),  # the trainer's check against the learner
    (["-X", "partition.assignment.strategy=roundrobin"], "partition.assignment.strategy"),
    (["-X", "enable.auto.commit=true"], "enable.auto.commit"),
    (["-X", "message.max.bytes=100000"], "message.max.bytes=100000 is under"),
    (["-X", "partitioner=random"], "partitioner"),  # the replay's producer
])
def test_a_flag_the_demos_processes_would_refuse_stops_it_before_it_starts_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        says: str) -> None:
    """Each passed the demo's check, so with a broker the demo started it, created the
    topics and exited 1 when its trainer exited 2 (CLI review)."""
    from stream_app.cli import main

    code = main(["demo", "--bootstrap-servers", "127.0.0.1:1", *argv,
                 "--report-dir", str(tmp_path / "report")])
    assert code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_the_up_front_check_builds_each_process_as_the_demo_starts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the demo overrides is not refused (an empty stats file: the trainer gets the
    report's), and what its processes would refuse is: a device in the config file, and
    a group id made too long by the demo's topic prefix (review of this session's diff)."""
    from stream_app.cli import build_parser
    from stream_app.cli.demo import _check_children
    from stream_app.config import ConfigError, KafkaConfig

    def check(*argv: str, prefix: str = "demo-1-ab12.") -> None:
        _check_children(build_parser().parse_args(["demo", *argv]),
                        KafkaConfig(topic_prefix=prefix))

    monkeypatch.setenv("STREAM_APP_TRAINER_STATS_FILE", "")
    check()
    config = tmp_path / "c.toml"
    config.write_text("[trainer]\ndevice = \"cuda:99\"\n")
    with pytest.raises(ConfigError, match="trainer.device"):
        check("--config", str(config))
    with pytest.raises(ConfigError, match="group_id"):
        check(prefix="p" * 199 + ".")


def test_a_data_file_that_is_not_movielens_says_the_demo_takes_movielens(tmp_path: Path) -> None:
    """Read as ratings, it failed at line 1 with "expected 4 fields"."""
    for name in ("events.jsonl", "events.csv", "notes.txt"):
        path = tmp_path / name
        path.write_text("{}\n")
        with pytest.raises(ConfigError, match="the demo replays MovieLens ratings"):
            load_input(path, limit=10)
