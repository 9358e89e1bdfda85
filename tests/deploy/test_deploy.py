"""deploy/ and the Dockerfile, checked where no cluster or Docker engine is at hand: every
Kubernetes manifest against the Kubernetes schema; every container locked down (non-root numeric
user, read-only root file system with emptyDir volumes where it writes, no privilege escalation, no
capabilities, the runtime's seccomp profile); the disruption budgets and network policies against
the workloads they select; the probes, drain and router against what the service serves; every
metric the alerts and the dashboard query against what the service exports; the Dockerfile's
user, health check, entry point, copied files and settings."""
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from driftseg.cli import COMMANDS
from driftseg.service import metrics as metrics_module
from driftseg.service.app import create_app
from driftseg.service.metrics import Metrics
from driftseg.service.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"
MANIFESTS = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))


def resources() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [r for r in resources() if r["kind"] == kind]


def setting_names() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def exported_metric_names() -> set[str]:
    """Every sample name the service's /metrics can show (histograms and counters with their suffixes)."""
    metrics = Metrics(stream_cap=4, max_pending=32)
    metrics.model_loaded("c" * 64, "source", "torch")
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    # the gauges read from the engine at scrape time, which a bare Metrics has no engine for
    return names | {"driftseg_streams_held", "driftseg_shift_score", "driftseg_gpu_memory_bytes", "driftseg_state_store_up"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_can_fail():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def workloads() -> list[dict]:
    return [r for r in resources() if r["kind"] in ("Deployment", "StatefulSet")]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selected(selector: dict) -> list[str]:
    """The workloads whose pods a label selector (matchLabels) picks."""
    wanted = selector["matchLabels"].items()
    return [w["metadata"]["name"] for w in workloads() if wanted <= pod_labels(w).items()]


def writable_paths(workload: dict, container: dict) -> list[str]:
    """The container's mount paths backed by an emptyDir."""
    empty = {v["name"] for v in workload["spec"]["template"]["spec"].get("volumes", []) if "emptyDir" in v}
    return [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty]


def under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


# what each program writes besides its volumes of data: driftseg's temporary files and kernel caches
# ($HOME), Redis's working directory, nginx's pid file and buffers (checked against nginx.conf below)
MUST_WRITE = {"driftseg": ["/tmp", "/home/driftseg", "/var/lib/driftseg/state"], "driftseg-worker": ["/tmp", "/home/driftseg"],
              "redis": ["/data"], "nginx": ["/tmp"]}


def test_every_container_is_locked_down():
    containers = [(w, c) for w in workloads() for c in w["spec"]["template"]["spec"]["containers"]]
    assert {c["name"] for _, c in containers} == set(MUST_WRITE)
    for workload, container in containers:
        name, sc = container["name"], container["securityContext"]
        assert sc["runAsNonRoot"] is True and isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0, name
        assert isinstance(sc["runAsGroup"], int) and sc["runAsGroup"] > 0, name
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]} and "add" not in sc["capabilities"], name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        pod = workload["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == sc["runAsUser"], name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        writable = writable_paths(workload, container)
        assert all(under(path, writable) for path in MUST_WRITE[name]), (name, writable)


def test_nginx_writes_only_where_it_has_an_empty_dir():
    [router] = [w for w in workloads() if w["metadata"]["name"] == "driftseg-router"]
    [nginx] = router["spec"]["template"]["spec"]["containers"]
    [config] = [c for c in by_kind("ConfigMap") if "nginx.conf" in c["data"]]
    conf = config["data"]["nginx.conf"]
    written = re.findall(r"^\s*(?:pid|\w+_temp_path)\s+(\S+);", conf, flags=re.M)
    assert len(written) == 6  # the pid file and the five temp paths, else nginx writes under its prefix
    assert all(under(path, writable_paths(router, nginx)) for path in written), written
    logs = re.findall(r"^\s*(?:error_log|access_log)\s+(\S+)", conf, flags=re.M)
    assert logs and all(path.startswith("/dev/std") for path in logs), logs


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (apt install nginx)")
def test_nginx_conf_parses(tmp_path):
    """The ConfigMap's nginx.conf through `nginx -t`, with the cluster's names (the replicas, kube-dns)
    made local and `resolve` (nginx >= 1.27.3, newer than Debian's) left out."""
    [config] = [c for c in by_kind("ConfigMap") if "nginx.conf" in c["data"]]
    conf = config["data"]["nginx.conf"]
    conf = re.sub(r"resolver \S+", "resolver 127.0.0.1", conf)
    conf = re.sub(r"driftseg-\d+\.driftseg", "127.0.0.1", conf).replace(" resolve;", ";")
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_disruption_budgets_keep_a_replica_of_each_served_workload():
    budgets = {selected(b["spec"]["selector"])[0]: b for b in by_kind("PodDisruptionBudget")}
    assert set(budgets) == {"driftseg", "driftseg-router"}  # not the one-pod Redis: a budget would block drains
    for name, budget in budgets.items():
        [workload] = [w for w in workloads() if w["metadata"]["name"] == name]
        assert len(selected(budget["spec"]["selector"])) == 1
        assert budget["spec"]["maxUnavailable"] < workload["spec"]["replicas"], name


def ingress_of(policy: dict) -> tuple[list[dict], set[int]]:
    """Every peer and port the policy lets in."""
    peers, ports = [], set()
    for rule in policy["spec"]["ingress"]:
        peers += rule["from"]
        ports |= {p["port"] for p in rule["ports"]}
    return peers, ports


def test_network_policies_let_in_only_the_router_prometheus_and_driftseg():
    policies = {selected(p["spec"]["podSelector"])[0]: p for p in by_kind("NetworkPolicy")}
    assert set(policies) == {"driftseg", "driftseg-redis", "driftseg-worker"}
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"] and len(selected(policy["spec"]["podSelector"])) == 1
    peers, ports = ingress_of(policies["driftseg"])
    assert ports == {8000}
    same_namespace = [p for p in peers if "namespaceSelector" not in p]
    assert [selected(p["podSelector"]) for p in same_namespace] == [["driftseg-router"]]
    [prometheus] = [p for p in peers if "namespaceSelector" in p]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert all("ipBlock" not in p and p.get("podSelector", {}).get("matchLabels") for p in peers)  # no open door
    peers, ports = ingress_of(policies["driftseg-redis"])
    assert ports == {6379} and [selected(p["podSelector"]) for p in peers] == [["driftseg"], ["driftseg-worker"]]
    assert all(set(p) == {"podSelector"} for p in peers)
    peers, ports = ingress_of(policies["driftseg-worker"])
    assert ports == {9101} and [p["podSelector"]["matchLabels"] for p in peers] == [{"app.kubernetes.io/name": "prometheus"}]


def test_replicas_probe_drain_and_settings():
    [sts] = by_kind("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [container] = pod["containers"]
    routes = set(create_app(Settings()).openapi()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    drain = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= drain + 30  # the drain, then the snapshot flush
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {e["name"] for e in container["env"]} <= setting_names()
    assert any(m["mountPath"] == "/var/lib/driftseg/state" for m in container["volumeMounts"])


def test_workers_share_the_jobs_and_the_models_with_the_replicas_and_bind_through_the_router():
    [sts] = by_kind("StatefulSet")
    [worker] = [w for w in workloads() if w["metadata"]["name"] == "driftseg-worker"]
    claims = {}
    for workload in (sts, worker):
        pod = workload["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert set(env) <= setting_names()
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        for setting in ("DRIFTSEG_JOBS_DIR", "DRIFTSEG_MODEL_STORE"):  # on the shared claim, in both
            [(root, volume)] = [(root, v) for root, v in mounts.items() if under(env[setting], [root])]
            claims.setdefault(setting, set()).add((env[setting], volume["persistentVolumeClaim"]["claimName"]))
        assert env["DRIFTSEG_JOB_QUEUE"].startswith("redis://driftseg-redis:")
    assert all(len(found) == 1 for found in claims.values()), claims  # the same paths on the same claim
    [container] = worker["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["command"] == ["driftseg", "worker"] and ("worker",) in COMMANDS
    [router] = [s for s in by_kind("Service") if s["metadata"]["name"] == "driftseg-router"]
    assert env["DRIFTSEG_SERVICE_URL"] == f"http://driftseg-router:{router['spec']['ports'][0]['port']}"
    [claim] = [c for c in by_kind("PersistentVolumeClaim") if c["metadata"]["name"] == "driftseg-shared"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_router_hashes_the_stream_id_onto_every_replica():
    [sts] = by_kind("StatefulSet")
    [config] = [c for c in by_kind("ConfigMap") if "nginx.conf" in c["data"]]
    conf = config["data"]["nginx.conf"]
    assert re.search(r"hash \$stream_key consistent;", conf)
    assert "default $http_x_stream_id;" in conf and '"" $arg_stream;' in conf
    servers = re.findall(r"server (\S+):8000", conf)
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    assert servers == [f"{name}-{i}.{service}" for i in range(sts["spec"]["replicas"])]
    [headless] = [s for s in by_kind("Service") if s["metadata"]["name"] == service]
    assert headless["spec"]["clusterIP"] == "None"


def _queried_metrics(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bdriftseg_[a-z_]+", expr)}


def test_exported_metrics_are_documented_and_have_no_created_series():
    metrics = Metrics(stream_cap=4, max_pending=32)
    metrics.observe_request("/segment", 200, 0.01)
    metrics.observe_batch(2, [0.001, 0.002])
    text = metrics.render()[0].decode()
    assert "_created" not in text and "driftseg_requests_total" in text
    assert "driftseg_segment_max_pending 32.0" in text
    families = {name for name in exported_metric_names() if name.startswith("driftseg_")
                and not name.endswith(("_bucket", "_sum", "_count", "_total"))}
    undocumented = {name for name in families if name not in metrics_module.__doc__}
    assert not undocumented, undocumented


def test_alert_rules_query_metrics_the_service_exports():
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    assert {"DriftsegQueueSaturated", "DriftsegServerErrors", "DriftsegStreamShifted"} <= {r["alert"] for r in rules}
    # the queue alert is a share of the limit each pod exports, not a number that holds for one DRIFTSEG_MAX_PENDING
    [queue] = [r["expr"] for r in rules if r["alert"] == "DriftsegQueueSaturated"]
    assert re.search(r"driftseg_segment_in_flight\s*/\s*driftseg_segment_max_pending", queue), queue
    assert all(0 < float(n) < 1 for n in re.findall(r"\d+(?:\.\d+)?", queue)), queue
    for rule in rules:
        assert rule["expr"] and rule["for"] and rule["annotations"]["summary"]
    queried = _queried_metrics([r["expr"] for r in rules])
    assert queried and queried <= exported_metric_names(), queried - exported_metric_names()
    assert "alerts.yml" in yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())["rule_files"]


def test_dashboard_queries_metrics_the_service_exports():
    dashboard = json.loads((REPO / "deploy/grafana/driftseg.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = _queried_metrics(exprs)
    assert len(queried) >= 8 and queried <= exported_metric_names(), queried - exported_metric_names()
    assert {"driftseg_segment_max_pending", "driftseg_model_info"} <= queried
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_user_health_entrypoint_files_and_settings():
    steps = dockerfile()
    users = [args for op, args in steps if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), users  # numeric, not root
    [sts] = by_kind("StatefulSet")
    [container] = sts["spec"]["template"]["spec"]["containers"]
    uid, _, gid = users[-1].partition(":")
    assert container["securityContext"]["runAsUser"] == int(uid)
    assert not gid or container["securityContext"]["runAsGroup"] == int(gid)
    [health] = [args for op, args in steps if op == "HEALTHCHECK"]
    assert "/healthz" in health
    [entry] = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entry[0] == "driftseg" and tuple(entry[1:]) in COMMANDS
    for op, args in steps:
        if op == "COPY":
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repo"
        if op == "ENV":
            for name in re.findall(r"\b(DRIFTSEG_[A-Z_]+)=", args):
                assert name in setting_names(), f"Dockerfile sets {name}, which no setting reads"
    # in the image a request that names no stream is refused rather than adapting a shared 'default' stream
    assert any(re.search(r"\bDRIFTSEG_REQUIRE_STREAM_ID=true\b", args) for op, args in steps if op == "ENV")
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "models/" not in ignored and ".venv/" in ignored
