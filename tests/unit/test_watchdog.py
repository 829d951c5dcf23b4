"""The stall watchdog: fires once when beats stop, never while they come; exits 75 in a process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from stream_app.config import ConfigError, KafkaConfig
from stream_app.config_load import build
from stream_app.core import LearnerConfig
from stream_app.scorer import Scorer
from stream_app.serving import ScorerConfig
from stream_app.trainer import EXIT_STALLED, TrainerConfig, make_trainer
from stream_app.watchdog import Watchdog


def test_fires_once_when_beats_stop_and_never_while_they_come() -> None:
    fired = threading.Event()
    calls: list[float] = []

    def on_stall() -> None:
        calls.append(time.monotonic())
        fired.set()

    # A 1 s limit against beats 0.1 s apart: only a 1 s pause of this thread (a loaded
    # machine) fires it early; 0.4 s left too little room (test review).
    with Watchdog(1.0, component="trainer", on_stall=on_stall, dump_stacks=False) as dog:
        for _ in range(30):  # 3 s of steady progress, three limits: no stall
            dog.beat("poll")
            time.sleep(0.1)
        assert not calls
        dog.beat("transaction")
        assert fired.wait(10.0)
        time.sleep(1.5)  # past another limit: it fires once, not once per limit
    assert len(calls) == 1


@pytest.mark.parametrize(("component", "step"), [("trainer", "transaction"), ("scorer", "revoke")])
def test_stall_logs_the_step_and_exits_the_process_with_75(component: str, step: str) -> None:
    code = ("import logging, time; logging.basicConfig(); "
            "from stream_app.watchdog import Watchdog; "
            f"dog = Watchdog(0.5, component={component!r}).__enter__(); dog.beat({step!r}); "
            "time.sleep(30)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,  # noqa: S603
                         check=False)
    assert out.returncode == EXIT_STALLED
    err = out.stderr.decode()
    assert "no progress" in err and f"step={step}" in err
    assert f"{component}.stall_timeout_s=0.5" in err and f"restarts the {component}" in err
    assert "stall-watchdog" in err or "Thread" in err  # every thread's stack was dumped


@pytest.mark.parametrize(("cls", "section"), [(TrainerConfig, "trainer"), (ScorerConfig, "scorer")])
def test_stall_timeout_is_configurable_and_checked(cls: type[TrainerConfig | ScorerConfig],
                                                   section: str) -> None:
    env = {f"STREAM_APP_{section.upper()}_STALL_TIMEOUT_S": "45"}
    assert build(cls, section, {}, env, {}).stall_timeout_s == 45.0
    assert cls().stall_timeout_s == 120.0
    with pytest.raises(ConfigError, match=f"{section}.stall_timeout_s must be in 1..86400"):
        cls(stall_timeout_s=0)


@pytest.mark.parametrize(("stall_s", "warned"), [(45.0, True), (60.0, True), (61.0, False)])
def test_a_stall_timeout_a_transaction_step_can_outlast_is_warned_of(
        stall_s: float, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Accepted (a restart is safe), but a broker away for a transaction step's 60 s then
    restarts the trainer where a longer timeout would abort and retry the batch."""
    make_trainer(KafkaConfig(bootstrap_servers="127.0.0.1:1"),
                 TrainerConfig(stall_timeout_s=stall_s), LearnerConfig())  # no broker needed
    assert ("is not over the 60 s a transaction step waits" in caplog.text) is warned


@pytest.mark.parametrize(("stall_s", "warned"), [(30.0, True), (60.0, False)])
def test_a_scorer_stall_timeout_an_outage_can_outlast_is_warned_of(
        stall_s: float, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Accepted (a restart is safe), but one turn of a scorer riding out a broker outage
    can wait tens of seconds (metadata waits of 10 s, a revoke's flush and commit)."""
    Scorer(KafkaConfig(bootstrap_servers="127.0.0.1:1"),
           ScorerConfig(stall_timeout_s=stall_s, device="cpu"))  # no broker needed
    assert ("scorer.stall_timeout_s=" in caplog.text) is warned
