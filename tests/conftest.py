"""Options and the broker shared by every test folder.

`bootstrap` (session): one real broker for tests/integration and
tests/reliability alike. Reuse a running broker with
STREAM_APP_BOOTSTRAP_SERVERS=HOST:PORT; otherwise a single-node KRaft broker is
started from the Maven jars on a free port and stopped at the end. There is no
skip: without a broker those tests fail loudly. Unit tests never ask for it, so
they start none.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.kafka import broker
from stream_app.kafka.admin import wait_for_broker

ROOT = Path(__file__).resolve().parents[1]
# The processes the tests start (trainer, scorer, demo, the CLI) import stream_app from
# this checkout, as the tests themselves do: the venv is shared, and its editable install
# points at whichever clone last ran `make venv`, which may be another one, meanwhile.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """`run_trainer` and `run_scorer` own their process and freeze what exists at their
    start (`freeze_survivors`); a test that calls one in the pytest process (through
    `main([...])`) must not leave the session's objects out of the collector's reach."""
    frozen = gc.get_freeze_count()
    yield
    if gc.get_freeze_count() > frozen:
        gc.unfreeze()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long variants too")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --run-slow (make test-long)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("STREAM_APP_BOOTSTRAP_SERVERS")
    if given:
        wait_for_broker(given, timeout_s=30)
        yield given
        return
    settings = broker.BrokerSettings(port=0, state_dir=tmp_path_factory.mktemp("broker"),
                                       dies_with_caller=True)
    try:
        yield broker.start(settings).bootstrap_servers
    finally:
        broker.stop(settings)
