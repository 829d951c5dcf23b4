"""Static checks of deploy/, docker-compose.yml and the Dockerfile, plus promtool.

No Docker engine runs here, so this is what keeps the laptop stack honest:
files referenced exist, images are pinned, ports and commands agree with the
scrape targets, alert rules and dashboard use only metrics that exist, and the
rules pass `promtool check` and their own unit tests. promtool is required:
a missing promtool FAILS these tests (a skipped check is an unchecked rule).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from stream_app.observability import declared_metric_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
METRIC_RE = re.compile(r"\bstream_app_[a-zA-Z0-9_]+")
REQUIRED_ALERTS = {
    "TrainerDown", "ScorerDown", "ConsumerLagGrowing", "DlqRateHigh", "TrainingLossNotFinite",
    "TrainingLossRising", "FreshnessP99High", "ScorerP99High", "ScorerMostlyFallback",
    "ScorerNotReady", "TransactionAbortsHigh",
}
#: The only flags compose passes to the CLI; the CLI must accept exactly these.
COMPOSE_FLAGS = {"--bootstrap-servers", "--metrics-host", "--metrics-port"}
APP_PORTS = {"trainer": 9464, "scorer": 9465}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install it with `apt-get install prometheus` "
                    "(the deploy/ rules are only checked by promtool)")
    return path


def _run(cmd: list[str], cwd: Path = ROOT) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _yaml(PROM / "alerts.yml")["groups"] for r in g["rules"] if "alert" in r]


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "stream-app.json").read_text())
    return data


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(ROOT / "docker-compose.yml")
    return data


# --- promtool -------------------------------------------------------------------------


def test_promtool_check_config(promtool: str) -> None:
    _run([promtool, "check", "config", str(PROM / "prometheus.yml")])


def test_promtool_check_rules(promtool: str) -> None:
    _run([promtool, "check", "rules", str(PROM / "alerts.yml")])


def test_promtool_rule_unit_tests(promtool: str) -> None:
    out = _run([promtool, "test", "rules", str(PROM / "alerts_test.yml")])
    assert "SUCCESS" in out


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses PromQL only inside rules: wrap each panel query in a recording rule.
    rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "1m")}
             for i, e in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run([promtool, "check", "rules", str(path)])


# --- alert rules ----------------------------------------------------------------------


def test_required_alerts_have_annotations_and_severity() -> None:
    rules = {r["alert"]: r for r in _alert_rules()}
    assert REQUIRED_ALERTS <= set(rules), REQUIRED_ALERTS - set(rules)
    for name, rule in rules.items():
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{name} lacks annotation {key}"
        # Only summaries are templated: alerts_test.yml copies the rest verbatim.
        assert "{{" not in annotations["description"] + annotations["runbook"], name
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name


def test_alert_unit_tests_cover_firing_and_quiet_and_are_current() -> None:
    builder = _load_script(PROM / "build_alert_tests.py")
    assert (PROM / "alerts_test.yml").read_text() == builder.build(), (
        "alerts_test.yml is stale: run python deploy/prometheus/build_alert_tests.py")
    fires = {c.alert for c in builder.CASES if c.fires}
    quiet = {c.alert for c in builder.CASES if not c.fires}
    every = {r["alert"] for r in _alert_rules()}
    assert fires == every, f"no firing test for {every - fires}"
    assert quiet == every, f"no quiet test for {every - quiet}"


def test_metric_names_in_rules_and_dashboard_exist() -> None:
    # A misspelt name is not a PromQL error: the query just returns nothing and the
    # alert never fires. So every name in an expression must be an exposed sample.
    declared = declared_metric_names()
    rules = _alert_rules()
    used = {"alerts.yml": [n for r in rules for n in METRIC_RE.findall(r["expr"])],
            "stream-app.json": [n for e in _dashboard_exprs() for n in METRIC_RE.findall(e)]}
    for source, names in used.items():
        assert names, f"no stream_app_* metric found in {source}"
        unknown = set(names) - declared
        assert not unknown, f"{source} uses metrics not in observability/metrics.py: {unknown}"
    # Runbooks may name a histogram by its family name (without _bucket/_count).
    prose = " ".join(" ".join(r["annotations"].values()) for r in rules)
    unknown = {n for n in METRIC_RE.findall(prose) if n not in declared
               and f"{n}_bucket" not in declared}
    assert not unknown, f"alerts.yml annotations name unknown metrics: {unknown}"


def test_rule_jobs_match_scrape_jobs() -> None:
    jobs = {c["job_name"] for c in _yaml(PROM / "prometheus.yml")["scrape_configs"]}
    text = (PROM / "alerts.yml").read_text() + json.dumps(_dashboard_exprs())
    used = set(re.findall(r'job=\\?"([^"\\]+)', text))
    assert used and used <= jobs, used - jobs


# --- Grafana --------------------------------------------------------------------------


def test_dashboard_is_current_and_well_formed() -> None:
    builder = _load_script(GRAFANA / "build_dashboard.py")
    assert (GRAFANA / "dashboards" / "stream-app.json").read_text() == builder.render(), (
        "stream-app.json is stale: run python deploy/grafana/build_dashboard.py")
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "loss", "hit rate", "freshness", "lag", "dlq", "scorer latency",
                  "fallback", "table sizes"):
        assert topic in titles, f"dashboard lacks a {topic} panel"


def test_grafana_provisioning_points_at_prometheus_and_dashboards() -> None:
    ds = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for p in _dashboard()["panels"] for t in p.get("targets", [])}
    assert uids == {ds["uid"]}
    provider = _yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"][0]
    mounts = dict(v.split(":")[:2][::-1] for v in _compose()["services"]["grafana"]["volumes"])
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


# --- docker-compose.yml and Dockerfile ------------------------------------------------


def test_images_are_pinned() -> None:
    images = {name: s["image"] for name, s in _compose()["services"].items() if "image" in s}
    for name, image in images.items():
        if "build" in _compose()["services"][name]:
            continue  # built locally from the Dockerfile
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image} is not pinned"
    assert images["kafka"] == "apache/kafka:3.9.1"
    assert re.fullmatch(r"prom/prometheus:v2\.53\.\d+", images["prometheus"])
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", images["grafana"])


def test_referenced_files_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: volume source {source} missing"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith(("COPY", "ADD")):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    for rule_file in _yaml(PROM / "prometheus.yml")["rule_files"]:
        assert (PROM / rule_file).is_file()


def test_the_image_installs_the_versions_of_the_last_green_run() -> None:
    """Unpinned, each image build took whatever torch and librdkafka were newest that day."""
    installs = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
                if "pip install" in line]
    assert installs and all("constraints.txt" in line for line in installs), installs


def test_torch_alone_comes_from_its_index_and_the_trainer_has_time_for_its_snapshot() -> None:
    """Its requirements came from the CPU index too, at whatever versions that hosts; and
    Docker's 10 s before SIGKILL could cut off the snapshot a stopping trainer writes."""
    (torch_install,) = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
                        if "TORCH_INDEX_URL}" in line]
    assert "--no-deps" in torch_install
    grace = _compose()["services"]["trainer"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= 30


def flags_of(service: dict[str, Any]) -> dict[str, str]:
    cmd: list[str] = service["command"]
    return dict(zip(cmd[2::2], cmd[3::2], strict=True))


def test_app_commands_ports_and_healthchecks_agree_with_scrape_targets() -> None:
    services = _compose()["services"]
    targets = {t for c in _yaml(PROM / "prometheus.yml")["scrape_configs"]
               for s in c["static_configs"] for t in s["targets"]}
    for name, port in APP_PORTS.items():
        service = services[name]
        cmd: list[str] = service["command"]
        assert cmd[:2] == ["stream-app", name]
        flags = dict(zip(cmd[2::2], cmd[3::2], strict=True))
        extra = {"--snapshot-dir"} if name == "trainer" else set()
        assert set(flags) == COMPOSE_FLAGS | extra, f"{name}: flags {set(flags)}"
        assert flags["--bootstrap-servers"] == "kafka:9092"
        assert flags["--metrics-host"] == "0.0.0.0"  # noqa: S104 (inside the container)
        assert flags["--metrics-port"] == str(port)
        assert f"{name}:{port}" in targets
        assert any(p.endswith(f":{port}") for p in service["ports"])
        assert f":{port}/healthz" in " ".join(service["healthcheck"]["test"])
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully")
    # The trainer's snapshots live on a named volume the image's user owns.
    mount = services["trainer"]["volumes"][0].split(":")
    assert mount[0] in _compose()["volumes"]
    assert flags_of(services["trainer"])["--snapshot-dir"].startswith(mount[1] + "/")
    assert f"install -d -o stream-app -g stream-app {mount[1]}" in (ROOT / "Dockerfile").read_text()
    topics = services["topics"]["command"]
    assert topics == ["stream-app", "topics", "create", "--bootstrap-servers", "kafka:9092"]


def test_kafka_is_a_single_kraft_node_that_supports_transactions() -> None:
    env = _compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert str(env[key]) == "1", key
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_dockerfile_installs_the_repo_with_its_schemas() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^COPY \. /app$", text, re.M)
    assert "pip install -c /app/constraints.txt /app" in text  # the wheel carries the
    # schemas: test_packaging.py
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & {"schemas", "stream_app", "pyproject.toml", "constraints.txt", "*"}


def test_compose_commands_parse_with_the_real_cli() -> None:
    # The containers run these argv; a flag the CLI does not accept is a crash loop
    # that no static check above would see.
    from stream_app.cli import build_parser

    for name in ("topics", *APP_PORTS):
        argv = _compose()["services"][name]["command"][1:]
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"stream-app rejects the compose command of {name}: {argv} ({exc})")
        assert args.bootstrap_servers == "kafka:9092"
        if name in APP_PORTS:
            assert args.metrics_port == APP_PORTS[name]
