"""deploy/kubernetes/: every manifest is a valid Kubernetes object (read into the
``kubernetes`` client's typed models, strictly: a misspelt field or a wrong type fails),
with probes, resources, a locked-down security context and secrets only from the Secret,
running compose's commands. tests/test_health.py runs their probes against real
processes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client import ApiClient

from claw_worker.config import Config
from claw_worker.config.store import parse_config_text, secret_values
from tests.fixtures.hosts import compose

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
EXAMPLE = "secret.example.yaml"
OPTIONAL = {"worker-hpa.yaml"}  # listed, commented out, in kustomization.yaml
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|AUTH|REDIS_URL", re.IGNORECASE)
WORKLOADS = ("Deployment", "StatefulSet")


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(KUBE.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for f, d in manifests() if d["kind"] == kind and f != EXAMPLE}


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) for every container of every workload."""
    found = []
    for _, doc in manifests():
        if doc["kind"] in WORKLOADS:
            pod = doc["spec"]["template"]["spec"]
            found.extend((doc["metadata"]["name"], pod, c) for c in pod["containers"])
    return found


def as_model(doc: dict[str, Any]) -> Any:
    """``doc`` read into the client's model for its apiVersion and kind (``apps/v1``
    Deployment: V1Deployment); the models reject wrong types and missing required fields."""
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    name = version[0].upper() + version[1:] + doc["kind"]
    assert hasattr(kubernetes.client, name), f"no model for {doc['apiVersion']} {doc['kind']}"
    return ApiClient().deserialize(json.dumps(doc), name, "application/json")


def differences(ours: Any, back: Any, path: str = "") -> list[str]:
    """Where ``back`` (the object written back from the model) differs from ``ours``."""
    if isinstance(ours, dict) and isinstance(back, dict):
        found = [f"{path}.{key}" for key in ours.keys() ^ back.keys()]
        for key in ours.keys() & back.keys():
            found += differences(ours[key], back[key], f"{path}.{key}")
        return found
    if isinstance(ours, list) and isinstance(back, list) and len(ours) == len(back):
        found = []
        for i, (a, b) in enumerate(zip(ours, back, strict=True)):
            found += differences(a, b, f"{path}[{i}]")
        return found
    return [] if ours == back else [path]


def strictly_valid(doc: dict[str, Any]) -> None:
    """The models drop fields they do not know: written back, the object must be ``doc``."""
    back = ApiClient().sanitize_for_serialization(as_model(doc))
    assert back == doc, f"fields the Kubernetes API does not have: {differences(doc, back)}"


@pytest.mark.parametrize(
    "doc", [d for _, d in manifests()], ids=[f"{f}:{d['kind']}" for f, d in manifests()]
)
def test_every_manifest_is_a_valid_kubernetes_object(doc: dict[str, Any]) -> None:
    strictly_valid(doc)


def test_the_validation_catches_a_misspelt_field_a_wrong_type_and_a_missing_one() -> None:
    worker = by_kind("Deployment")["claw-worker"]
    misspelt = json.loads(json.dumps(worker))
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(AssertionError, match="fields the Kubernetes API does not have"):
        strictly_valid(misspelt)
    wrong_type = json.loads(json.dumps(worker))
    wrong_type["spec"]["replicas"] = "2"
    with pytest.raises(ValueError, match="replicas"):
        as_model(wrong_type)
    missing = json.loads(json.dumps(worker))
    del missing["spec"]["selector"]
    with pytest.raises(ValueError, match="selector"):
        as_model(missing)


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {EXAMPLE} - OPTIONAL
    text = (KUBE / "kustomization.yaml").read_text()
    assert all(f"# - {name}" in text for name in OPTIONAL)
    for _, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"], doc["kind"]
    images = {image["name"] for image in kustomization["images"]}
    assert {c["image"].split(":")[0] for _, _, c in containers()} - {"redis"} == images


def test_every_container_has_resources_probes_and_a_locked_down_context() -> None:
    for workload, pod, container in containers():
        where = f"{workload}/{container['name']}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), where
        assert "livenessProbe" in container and "readinessProbe" in container, where
        image, _, tag = container["image"].rpartition(":")
        assert image and tag and tag != "latest" and "/" not in tag, f"{where}: pin a tag"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        assert "command" not in container, f"{where}: args, so the image's tini stays PID 1"
        assert all("hostPort" not in p for p in container.get("ports", [])), where
        # The root filesystem is read-only: the places a process writes are volumes.
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        needed = {"/data"} if workload == "claw-redis" else {"/home/claw", "/tmp"}
        assert needed <= writable, where
        # A mount inside another sits right below its root: a directory the runtime made in
        # between would belong to root, so uid 1000 could not write there.
        paths = [Path(m["mountPath"]) for m in container["volumeMounts"]]
        for inner in paths:
            outer = [p for p in paths if p != inner and p in inner.parents]
            assert not outer or inner.parent in outer, f"{where}: {inner} needs {inner.parent}"


def test_names_and_selectors_resolve() -> None:
    """What the API server or a rollout would trip on and the models cannot see."""
    pods = []
    for _, doc in manifests():
        if doc["kind"] in WORKLOADS:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
            pods.append(labels)
            pod = doc["spec"]["template"]["spec"]
            volumes = {v["name"] for v in pod.get("volumes", [])}
            volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
            for container in pod["containers"]:
                ports = {p["name"] for p in container.get("ports", [])}
                assert {m["name"] for m in container["volumeMounts"]} <= volumes
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = container.get(probe, {}).get("httpGet", {}).get("port")
                    assert port is None or port in ports, f"{probe} port {port}"
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in by_kind("ConfigMap")
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in by_kind(
                        "PersistentVolumeClaim"
                    )

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pods)

    for name, service in by_kind("Service").items():
        assert selects(service["spec"]["selector"]), name
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for name, doc in by_kind(kind).items():
            key = "podSelector" if kind == "NetworkPolicy" else "selector"
            assert selects(doc["spec"][key]["matchLabels"]), f"{kind} {name}"
    for hpa in by_kind("HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in by_kind("Deployment")


def test_secrets_come_from_the_secret_and_the_example_is_unusable() -> None:
    example = next(d for f, d in manifests() if f == EXAMPLE)
    assert [f for f, d in manifests() if d["kind"] == "Secret"] == [EXAMPLE]
    referenced = set()
    for workload, _, container in containers():
        for var in container.get("env", []):
            if SECRET_NAME.search(var["name"]):
                assert "value" not in var, f"{workload}: {var['name']} in plain text"
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == example["metadata"]["name"]
                referenced.add(ref["key"])
            assert not SECRET_NAME.search(str(var.get("value", ""))), var
    assert referenced == set(example["stringData"]), "the example lists every key used"
    assert all("CHANGE ME" in value for value in example["stringData"].values())
    # Applied unchanged, the placeholder token is refused, so the fleet does not start.
    with pytest.raises(ValueError, match="spaces"):
        Config.model_validate({"gateway": {"token": example["stringData"]["CLAW_GATEWAY_TOKEN"]}})


def test_the_config_map_is_a_clawfleet_config_without_secrets(monkeypatch) -> None:
    monkeypatch.delenv("CLAW_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config_map = by_kind("ConfigMap")["claw-config"]
    config = parse_config_text(config_map["data"]["config.json"], "configmap.yaml")
    assert secret_values(config) == []
    for workload, pod, container in containers():
        if workload == "claw-redis":
            continue
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["CLAW_CONFIG"] == "/etc/claw/config.json", workload
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/claw")
        assert mount["readOnly"] is True and "subPath" not in mount, workload  # edits arrive
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == "claw-config", workload


def test_the_fleet_shape() -> None:
    deployments = by_kind("Deployment")
    assert deployments["claw-beat"]["spec"]["replicas"] == 2  # RedBeat's lock: one active
    worker_pod = deployments["claw-worker"]["spec"]["template"]["spec"]
    workspace = next(v for v in worker_pod["volumes"] if "persistentVolumeClaim" in v)
    claim = by_kind("PersistentVolumeClaim")[workspace["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "shared by every worker pod"
    mounts = {m["mountPath"]: m["name"] for m in worker_pod["containers"][0]["volumeMounts"]}
    assert mounts["/home/claw/.claw/workspace"] == workspace["name"]
    assert all(
        s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in by_kind("Service").values()
    )
    assert not by_kind("Ingress"), "nothing is exposed outside the cluster by default"
    assert by_kind("NetworkPolicy")["claw-flower"]["spec"]["ingress"] == []
    redis = by_kind("StatefulSet")["claw-redis"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"], "the AOF on a PersistentVolume"
    # The manifests run compose's commands, the ones the tests run (test_multihost.py).
    services = compose()["services"]
    for role in ("ingress", "worker", "beat", "flower"):
        pod = deployments[f"claw-{role}"]["spec"]["template"]["spec"]
        assert pod["containers"][0]["args"] == services[role]["command"], role


def kind_and_name(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def test_kustomize_builds_the_listed_objects_when_kubectl_is_installed() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomization.yaml was checked above")
    out = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    listed = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    expected = [d for f, d in manifests() if f in listed]
    assert sorted(map(kind_and_name, built)) == sorted(map(kind_and_name, expected))
    for doc in built:
        strictly_valid(doc)


def test_kubeconform_when_installed() -> None:
    kubeconform = shutil.which("kubeconform")
    if kubeconform is None:
        pytest.skip("kubeconform is not installed: the client's models checked the manifests")
    files = [str(p) for p in sorted(KUBE.glob("*.yaml")) if p.name != "kustomization.yaml"]
    out = subprocess.run([kubeconform, "-strict", "-summary", *files],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
