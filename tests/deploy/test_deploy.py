"""deploy/ and the Dockerfile, proved without a cluster or a Docker engine.

Both overlays are rendered with `kubectl kustomize`, every built-in object is validated against
the Kubernetes schemas offline (kubernetes-validate, strict), and what the manifests say about
the code (probe paths, ports, environment variables, metric names) is checked against the code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service import create_app
from service.cli import GRACEFUL_TIMEOUT_SECONDS
from service.config import DEFAULT_METRICS_PORT, DEFAULT_PORT, Settings
from service.store.jobs import DELIVERY_JOB_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "overlays" / request.param)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def container(objects: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    [obj] = find(objects, "Deployment", deployment)
    return obj["spec"]["template"]["spec"]["containers"][0]


def test_every_object_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]]
            assert obj["metadata"]["name"] and obj["spec"]
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_probes_and_ports_match_the_code(rendered: list[dict[str, Any]]) -> None:
    app = create_app(
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "STRIPE_WEBHOOK_SECRETS": "whsec_x"}, role="web")
    )
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    web = container(rendered, "relay-web")
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert [p["containerPort"] for p in web["ports"]] == [DEFAULT_PORT]
    worker = container(rendered, "relay-worker")
    assert worker["args"][0] == "worker"
    assert [p["containerPort"] for p in worker["ports"]] == [DEFAULT_METRICS_PORT]
    [service] = find(rendered, "Service", "relay-web")
    assert service["spec"]["ports"][0]["targetPort"] == web["ports"][0]["name"]


def test_pods_run_as_non_root_on_a_read_only_root(rendered: list[dict[str, Any]]) -> None:
    for name in ("relay-web", "relay-worker"):
        [deployment] = find(rendered, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        main = pod["containers"][0]
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        env = {e["name"]: e.get("value") for e in main.get("env", [])}
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]]
        # gunicorn's heartbeat files go to /tmp: on disk, their fchmod can stall a worker into a kill.
        assert volumes[mounts["/tmp"]]["emptyDir"]["medium"] == "Memory"
        assert "resources" in main and main["resources"]["requests"]


def test_environment_names_are_settings_the_code_reads(rendered: list[dict[str, Any]]) -> None:
    source = "\n".join(p.read_text() for p in (REPO / "service").rglob("*.py"))
    known = set(re.findall(r'reader\.\w+\(\s*"([A-Z0-9_]+)"', source))
    known |= set(re.findall(r'_env="([A-Z0-9_]+)"', source))  # named by the sources' and destinations' specs
    [config] = find(rendered, "ConfigMap", "relay-config")
    names = set(config["data"])
    for deployment in ("relay-web", "relay-worker"):
        main = container(rendered, deployment)
        names |= {e["name"] for e in main.get("env", [])}
        assert {"configMapRef": {"name": "relay-config"}} in main["envFrom"]
        assert {"secretRef": {"name": "relay-secrets"}} in main["envFrom"]
    example = yaml.safe_load((DEPLOY / "base" / "secret.example.yaml").read_text())
    names |= set(example["stringData"])
    assert names <= known, names - known
    # The ConfigMap's values are valid settings (secrets stand in for the placeholders).
    stand_ins = {
        "REDIS_URL": "redis://relay:pw@relay-redis:6379/0",  # a secret: it carries the Redis password
        "USERCOM_API_KEY": "k",
        "STRIPE_WEBHOOK_SECRETS": "whsec_x",
        "RELAY_ADMIN_TOKEN": "t",
    }
    assert "REDIS_URL" not in config["data"], "the Redis URL carries a password: it belongs in the Secret"
    assert set(stand_ins) == set(example["stringData"])
    Settings.from_env({**config["data"], **stand_ins})


def test_no_secret_carries_a_real_looking_value(rendered: list[dict[str, Any]]) -> None:
    assert find(rendered, "Secret") == [], "real secrets are created out of band, never rendered"
    example = yaml.safe_load((DEPLOY / "base" / "secret.example.yaml").read_text())
    assert all(v.startswith("<") and v.endswith(">") for v in example["stringData"].values())
    for config in find(rendered, "ConfigMap"):
        text = json.dumps(config["data"])
        assert not re.search(r"whsec_[A-Za-z0-9]{8,}|\b[0-9a-f]{32,}\b|sk_(live|test)_", text), config["metadata"]


def test_the_web_stops_listening_only_after_routing_to_it_stopped(rendered: list[dict[str, Any]]) -> None:
    [web] = find(rendered, "Deployment", "relay-web")
    pod = web["spec"]["template"]["spec"]
    [container] = pod["containers"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) >= 5  # endpoints and the ingress catch up meanwhile
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + GRACEFUL_TIMEOUT_SECONDS


def test_an_autoscaled_deployment_leaves_its_count_to_the_autoscaler(rendered: list[dict[str, Any]]) -> None:
    """A `replicas` beside an HPA resets the scale at every `kubectl apply`."""
    autoscalers = find(rendered, "HorizontalPodAutoscaler")
    assert autoscalers
    for hpa in autoscalers:
        [target] = find(rendered, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], target["metadata"]["name"]


def test_workers_outlive_their_longest_job_and_never_scale_to_zero(rendered: list[dict[str, Any]]) -> None:
    [worker] = find(rendered, "Deployment", "relay-worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > DELIVERY_JOB_TIMEOUT
    assert worker["spec"]["replicas"] >= 1
    for scaled in find(rendered, "ScaledObject"):
        assert scaled["spec"]["minReplicaCount"] >= 1
        # On the relay's Prometheus metric, not on Redis: KEDA needs no path to Redis nor its password.
        triggers = scaled["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"prometheus"}
        queries = [t["metadata"]["query"] for t in triggers]
        assert 'destination="usercom",lane="live"' in queries[0] and "relay_queue_depth" in queries[0]
        assert {t["metadata"]["threshold"] for t in triggers} == {"200"}


def test_the_redis_statefulset_is_governed_by_a_headless_service_of_its_pods(rendered: list[dict[str, Any]]) -> None:
    [redis] = find(rendered, "StatefulSet", "relay-redis")
    [service] = find(rendered, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]


def test_redis_never_forgets_accepted_events(rendered: list[dict[str, Any]]) -> None:
    [redis] = find(rendered, "StatefulSet", "relay-redis")
    assert redis["spec"]["volumeClaimTemplates"], "data on a PersistentVolume"
    conf = next(c["data"]["redis.conf"] for c in find(rendered, "ConfigMap") if "redis.conf" in c["data"])
    for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert line in conf.splitlines()


def _bytes(quantity: str) -> int:
    units = {"mb": 2**20, "gb": 2**30, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]+)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def test_redis_is_patched_bounded_and_needs_a_password(rendered: list[dict[str, Any]]) -> None:
    [redis] = find(rendered, "StatefulSet", "relay-redis")
    pod = redis["spec"]["template"]["spec"]
    [main] = pod["containers"]
    # 7.4.2 has CVE-2025-49844 (Lua use-after-free, fixed in 7.4.6) and CVE-2025-21605 (7.4.3).
    major, minor, patch = (int(n) for n in re.fullmatch(r"redis:(\d+)\.(\d+)\.(\d+)", main["image"]).groups())  # type: ignore[union-attr]
    assert (major, minor) > (7, 4) or (major, minor, patch) >= (7, 4, 6), main["image"]
    conf = dict(
        line.split(" ", 1)
        for c in find(rendered, "ConfigMap")
        if "redis.conf" in c["data"]
        for line in c["data"]["redis.conf"].splitlines()
        if line and not line.startswith("#")
    )
    # maxmemory under the container limit: noeviction refuses writes before the kernel OOM-kills Redis.
    assert 0 < _bytes(conf["maxmemory"]) <= 0.8 * _bytes(main["resources"]["limits"]["memory"])
    # The ACL file comes from a Secret (never rendered), mounted where redis.conf reads it.
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [acl_volume] = [name for name, v in volumes.items() if v.get("secret", {}).get("secretName") == "relay-redis-acl"]
    assert conf["aclfile"] == f"{mounts[acl_volume]}/users.acl"
    users = {line.split()[1]: line.split()[2:] for line in (DEPLOY / "redis" / "users.acl").read_text().splitlines()}
    assert users["default"] == ["off"]
    assert "on" in users["relay"] and "><relay-redis-password>" in users["relay"]
    assert "-@dangerous" in users["relay"] and "~*" not in users["relay"] and "+@all" not in users["relay"]
    assert users["healthcheck"][-2:] == ["-@all", "+ping"]
    assert "healthcheck" in " ".join(main["readinessProbe"]["exec"]["command"])


def test_network_policies_limit_ingress_and_egress(rendered: list[dict[str, Any]]) -> None:
    def namespaces(rule: dict[str, Any]) -> set[str]:
        return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}

    [web] = find(rendered, "NetworkPolicy", "relay-web")
    # /status, /metrics and /admin share the webhook port: only the ingress controller (which
    # routes /webhooks/ only) and monitoring may reach it, not any pod of the cluster.
    [web_in] = web["spec"]["ingress"]
    assert web_in["ports"] == [{"protocol": "TCP", "port": DEFAULT_PORT}]
    assert namespaces(web_in) == {"ingress-nginx", "monitoring"}
    egress_ports = {p["port"] for rule in web["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {6379, 53}, "the web calls no external API: no egress to 443"
    [worker] = find(rendered, "NetworkPolicy", "relay-worker")
    [worker_in] = worker["spec"]["ingress"]
    assert namespaces(worker_in) == {"monitoring"}
    assert worker_in["ports"] == [{"protocol": "TCP", "port": DEFAULT_METRICS_PORT}]
    [redis] = find(rendered, "NetworkPolicy", "relay-redis")
    [redis_in] = redis["spec"]["ingress"]
    [peer] = redis_in["from"]
    assert set(peer) == {"podSelector"}, "only relay pods reach Redis"
    [admitted] = peer["podSelector"]["matchExpressions"]
    # a one-off Job (sync, backfill, check-config --connect) reaches Redis and the APIs, and nothing else
    [job] = find(rendered, "NetworkPolicy", "relay-job")
    assert "relay-job" in admitted["values"] and job["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "relay-job"
    }
    assert "ingress" not in job["spec"] and "Ingress" in job["spec"]["policyTypes"]
    assert {p["port"] for rule in job["spec"]["egress"] for p in rule["ports"]} == {6379, 53, 443}
    for ingress in find(rendered, "Ingress"):
        paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
        assert paths == ["/webhooks/"], "admin, status and metrics must not be public"


def _exposed_metric_names(redis_url: str) -> set[str]:
    app = create_app(Settings.from_env({"REDIS_URL": redis_url, "STRIPE_WEBHOOK_SECRETS": "whsec_x"}, role="web"))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_alerts_and_dashboard_use_metrics_the_code_exposes(redis_server: Any, redis: Any) -> None:
    exposed = _exposed_metric_names(redis_server.url)
    rules = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    exprs = [rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    scaled = yaml.safe_load((DEPLOY / "overlays" / "prod" / "keda-scaledobject.yaml").read_text())
    exprs += [trigger["metadata"]["query"] for trigger in scaled["spec"]["triggers"]]
    used = {name for expr in exprs for name in re.findall(r"\b(relay_[a-z_]+)", expr)}
    assert used, "no relay metric referenced"
    assert used <= exposed, used - exposed
    alerts = {rule["alert"] for group in rules["spec"]["groups"] for rule in group["rules"]}
    assert {
        "RelayDeadLetterQueueGrowing",
        "RelayOldestPendingTooOld",
        "RelayUsercomThrottledSustained",
        "RelayNoDeliveryWithBacklog",
        "RelayWebhookErrorRatio",
        "RelayRedisMemoryHigh",
    } <= alerts


def test_dockerfile_is_production_shaped() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    bases = [line.split()[1] for line in instructions if line.startswith("FROM ")]
    assert len(bases) >= 2, "multi-stage"
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    final = instructions[max(i for i, line in enumerate(instructions) if line.startswith("FROM ")) :]
    user = next(line.split()[1] for line in reversed(final) if line.startswith("USER "))
    assert user.split(":")[0] not in ("0", "root")
    assert not any(line.startswith("HEALTHCHECK") for line in instructions)
    assert not any(re.search(r"\b(gcc|build-essential|apt-get install)\b", line) for line in final)
    entrypoint = json.loads(next(line for line in final if line.startswith("ENTRYPOINT")).split(" ", 1)[1])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["relay"] and scripts["relay"] == "service.entry:main"
    exposed = {int(p) for line in final if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert exposed == {DEFAULT_PORT, DEFAULT_METRICS_PORT}
    assert any("--require-hashes" in line and "requirements.lock" in line for line in instructions)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_lock_file_pins_every_runtime_dependency() -> None:
    lock = (REPO / "requirements.lock").read_text()
    pinned = {m.lower().replace("_", "-") for m in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
        assert name in pinned, name
    assert "--hash=sha256:" in lock
