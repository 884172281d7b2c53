"""The alerts of deploy/monitoring/prometheusrule.yaml, evaluated by Prometheus' own `promtool test rules` over
series shaped like the relay's: each fires in the situation its summary names, and stays quiet in the
situation next to it. (tests/system-deps.sh puts promtool in .venv/bin.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.intake import Outcome

RULES = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "prometheusrule.yaml"
WEB_POD = 'pod="relay-web-1"'  # shared-state series come from every web pod: the rules take max()


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("no promtool: tests/system-deps.sh puts it in .venv/bin")
    return found


def rule(name: str) -> dict[str, Any]:
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    return next(r for group in groups for r in group["rules"] if r.get("alert") == name)


def firing(name: str, **labels: str) -> dict[str, Any]:
    """The alert as Prometheus would fire it: the rule's labels and annotations, `$labels` filled in."""
    alert = rule(name)
    annotations = {
        key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        for key, text in alert.get("annotations", {}).items()
    }
    return {"exp_labels": {**alert.get("labels", {}), **labels}, "exp_annotations": annotations}


def check(promtool: str, tmp_path: Path, series: dict[str, str], at: str, alert: str, expected: list[Any]) -> None:
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series.items()],
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dlq(size: str, dropped: str) -> dict[str, str]:
    return {
        f'relay_dlq_size{{destination="usercom",reason="invalid_payload",{WEB_POD}}}': size,
        f'relay_dlq_size{{destination="usercom",reason="retries_exhausted",{WEB_POD}}}': "0x60",
        f'relay_dlq_dropped_total{{destination="usercom",{WEB_POD}}}': dropped,
    }


def test_dead_letters_piling_up_fire_also_at_the_retention_cap(promtool: str, tmp_path: Path) -> None:
    """At RELAY_DLQ_MAX_ITEMS every new dead letter drops an old one: the size stands still."""
    fires = [firing("RelayDeadLetterQueueGrowing", destination="usercom")]
    at_cap = dlq(size="100000x60", dropped="0+20x60")  # 20 new dead letters a minute, each dropping one
    check(promtool, tmp_path, at_cap, "50m", "RelayDeadLetterQueueGrowing", fires)
    growing = dlq(size="0+5x60", dropped="0x60")
    check(promtool, tmp_path, growing, "50m", "RelayDeadLetterQueueGrowing", fires)


def test_old_dead_letters_aging_out_are_no_new_ones(promtool: str, tmp_path: Path) -> None:
    """Retention by age drops items (dropped grows) as the size falls by as many: nothing new came."""
    aging_out = dlq(size="5000-10x60", dropped="0+10x60")
    check(promtool, tmp_path, aging_out, "50m", "RelayDeadLetterQueueGrowing", [])


def test_the_error_ratio_counts_error_answers_not_202s_kept_in_the_dead_letter_queue(
    promtool: str, tmp_path: Path
) -> None:
    """Every outcome of a 2xx answer (intake's Outcome) is left out of the errors: an identity conflict is
    answered 202 and counted by the dead-letter alert instead."""
    answered_2xx = {o.value for o in Outcome}
    errors = rule("RelayWebhookErrorRatio")["expr"]
    excluded = re.search(r'outcome!~"([^"]+)"', errors)
    assert excluded is not None and set(excluded.group(1).split("|")) == answered_2xx

    def webhooks(**per_minute: int) -> dict[str, str]:
        return {
            f'relay_webhooks_total{{source="stripe",event_type="customer.updated",outcome="{outcome}",{WEB_POD}}}': (
                f"0+{rate}x60"
            )
            for outcome, rate in per_minute.items()
        }

    kept = webhooks(accepted=100, duplicate=5, identity_conflict=20, unresolved_identity=10)
    check(promtool, tmp_path, kept, "40m", "RelayWebhookErrorRatio", [])
    refused = webhooks(accepted=100, signature_invalid=10, invalid_payload=5)
    check(promtool, tmp_path, refused, "40m", "RelayWebhookErrorRatio", [firing("RelayWebhookErrorRatio")])
