"""The shipped Prometheus alert rules (scripts/prometheus-alerts.yml): valid for promtool, loaded
by the compose Prometheus, and each fires on the series it is about (`promtool test rules`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "scripts" / "prometheus-alerts.yml"
HANDLERS = "payment,inventory"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, (
        "promtool is missing: install Debian's `prometheus` package (`apt-get install "
        "prometheus`; .ci/run does it when missing)"
    )
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def alert(name: str, at: str, fired: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": fired}


def fired(labels: dict[str, str], **_: Any) -> dict[str, Any]:
    return {"exp_labels": labels}


def case(series: list[tuple[str, str]], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": alerts,
    }


def test_the_rules_pass_promtool_check() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout


def test_the_compose_prometheus_loads_the_rules(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(m.split(":")[:2] for m in compose["services"]["prometheus"]["volumes"])
    inside = {path: ROOT / source for source, path in mounts.items()}
    # the container's /etc/prometheus, rebuilt here: promtool reads the rules the config names
    for path, source in inside.items():
        shutil.copy(source, tmp_path / Path(path).name)
    config = tmp_path / "prometheus.yml"
    checked = run_promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout


def test_each_rule_fires_on_what_it_is_about(tmp_path: Path) -> None:
    handlers = f'sagastream_worker_up{{role="{HANDLERS}",instance="h1"}}'
    orchestrator = 'sagastream_worker_up{role="orchestrator",instance="o1"}'
    tests = [
        # the handler worker goes away after 10 minutes (its target is gone: stale); the orchestrator stays
        case(
            [(handlers, "1x10 stale"), (orchestrator, "1x60")],
            [
                alert("SagastreamWorkerRoleDown", "9m", []),
                alert(
                    "SagastreamWorkerRoleDown",
                    "15m",
                    [fired({"severity": "critical", "role": HANDLERS})],
                ),
            ],
        ),
        case(
            [
                (
                    'sagastream_dead_letters_total{role="orchestrator",topic="o.events",reason="undecodable",instance="o1"}',
                    "0 0 0 3 3",
                ),
                ('sagastream_registry_up{role="payment",instance="h1"}', "1 0x5"),
                ('sagastream_transactions_total{result="aborted",instance="o1"}', "0+2x10"),
                (
                    'sagastream_consumer_lag{group="g",topic="t",partition="0",instance="h1"}',
                    "5000x15",
                ),
            ],
            [
                alert(
                    "SagastreamDeadLetters",
                    "4m",
                    [
                        fired(
                            {
                                "severity": "warning",
                                "role": "orchestrator",
                                "topic": "o.events",
                                "reason": "undecodable",
                            }
                        )
                    ],
                ),
                alert(
                    "SagastreamRegistryDown",
                    "4m",
                    [fired({"severity": "critical", "role": "payment", "instance": "h1"})],
                ),
                alert(
                    "SagastreamTransactionsAborting",
                    "10m",
                    [fired({"severity": "critical", "instance": "o1"})],
                ),
                alert(
                    "SagastreamConsumerLag",
                    "12m",
                    [fired({"severity": "warning", "group": "g", "topic": "t"})],
                ),
            ],
        ),
        # three order sagas run for two hours; others end for the first half hour, then none
        case(
            [
                ('sagastream_sagas_running{saga="order",status="running",instance="o1"}', "3x120"),
                (
                    'sagastream_saga_outcomes_total{saga="order",status="completed",instance="o1"}',
                    "0+1x30 30x90",
                ),
            ],
            [
                alert("SagastreamSagasStuck", "60m", []),
                alert(
                    "SagastreamSagasStuck",
                    "110m",
                    [fired({"severity": "warning", "saga": "order"})],
                ),
            ],
        ),
        # a review has waited for a day less 5 minutes, then goes on waiting (1 min a sample)
        case(
            [
                (
                    'sagastream_saga_oldest_waiting_seconds{saga="loan",step="review",instance="o1"}',
                    "86100+60x30",
                )
            ],
            [
                alert("SagastreamSagaWaitingLong", "10m", []),
                alert(
                    "SagastreamSagaWaitingLong",
                    "20m",
                    [fired({"severity": "warning", "saga": "loan", "step": "review"})],
                ),
            ],
        ),
    ]
    # promtool compares annotations too: these tests are about when rules fire, so a copy of
    # the rules without their texts is tested
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    spec = tmp_path / "alerts-test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": tests}))
    tested = run_promtool("test", "rules", str(spec))
    assert tested.returncode == 0, tested.stdout + tested.stderr
