"""The Kubernetes manifests: each kustomization renders, validates offline (core kinds with
kubernetes-validate, the Prometheus Operator's kinds with its CRD schemas), and wires the
exporter as documented: locked down, probed, its password from a Secret file, sharded by
ordinal in the StatefulSet."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_versions
from packaging.version import Version
from sqlalchemy import make_url

from crmsync_testing.kubernetes import (
    KUBERNETES,
    KUSTOMIZATIONS,
    ROOT,
    Resource,
    container,
    matches,
    of_kind,
    one,
    render,
    render_directory,
    workload,
)
from exporter import __version__
from exporter.cli import parse_args, parse_shard
from exporter.config import parse_config
from exporter.sharding import Shard

CRDS = Path(__file__).parent / "crds"
OPERATOR_GROUP = "monitoring.coreos.com"
OLDEST_KUBERNETES = Version("1.29")  # apps.kubernetes.io/pod-index is a label from 1.28 on
SECRET = "crmsync-exporter-store-passwords"
PORT = 9312


# --- validation ----------------------------------------------------------------------------


def kubernetes_versions_to_check() -> list[str]:
    """The oldest supported Kubernetes and the newest kubernetes-validate knows."""
    known = sorted({Version(v) for v in kubernetes_versions.all_versions()})
    supported = [v for v in known if v >= OLDEST_KUBERNETES]
    assert supported, f"kubernetes-validate knows no Kubernetes >= {OLDEST_KUBERNETES}: {known}"
    return [str(supported[0]), str(supported[-1])]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_core_kinds_are_valid_kubernetes(kustomization: str) -> None:
    core = [r for r in render(kustomization) if not r["apiVersion"].startswith(OPERATOR_GROUP)]
    assert core
    for version in kubernetes_versions_to_check():
        for resource in core:
            # strict: an unknown field (a typo) is an error, as kubectl apply makes it.
            kubernetes_validate.validate(resource, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = one(render("base"), "Deployment")
    container_spec = deployment["spec"]["template"]["spec"]["containers"][0]
    container_spec["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(deployment, kubernetes_versions_to_check()[0], strict=True)


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused where the API server would refuse them.

    Structural schemas prune unknown fields; kubectl apply (field validation "Strict") turns
    that into an error, which is what catches a misspelt key.
    """
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != kind:
            continue
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if f"{group}/{version['name']}" == api_version and version["served"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                # OpenAPI v3.0 schemas are JSON Schema draft 4 in substance. (No check_schema:
                # a few patterns are Go's RE2 syntax, "(?i)" mid-pattern, which Python's re
                # refuses; no field of ours is checked against those.)
                return jsonschema.Draft4Validator(schema)
    raise AssertionError(f"no CRD in {CRDS} serves {kind} {api_version}")


def operator_resources(kustomization: str) -> list[Resource]:
    return [r for r in render(kustomization) if r["apiVersion"].startswith(OPERATOR_GROUP)]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_operator_kinds_match_the_prometheus_operator_crds(kustomization: str) -> None:
    resources = operator_resources(kustomization)
    assert sorted(r["kind"] for r in resources) == ["PrometheusRule", "ServiceMonitor"]
    for resource in resources:
        errors = list(crd_validator(resource["kind"], resource["apiVersion"]).iter_errors(resource))
        assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("ServiceMonitor", lambda r: r["spec"]["endpoints"][0].update(intervall="15s")),
        ("ServiceMonitor", lambda r: r["spec"]["endpoints"][0].update(interval="15 seconds")),
        ("PrometheusRule", lambda r: r["spec"]["groups"][0]["rules"][0].update(expresion="1")),
        ("PrometheusRule", lambda r: r["spec"]["groups"][0].pop("name")),
    ],
)
def test_the_crd_schemas_catch_mistakes(kind: str, break_it: Any) -> None:
    resource = copy.deepcopy(one(operator_resources("base"), kind))
    break_it(resource)
    assert list(crd_validator(kind, resource["apiVersion"]).iter_errors(resource))


# --- the pod -------------------------------------------------------------------------------


def pod_spec(kustomization: str) -> dict[str, Any]:
    return dict(workload(render(kustomization))["spec"]["template"]["spec"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_pod_is_locked_down(kustomization: str) -> None:
    pod = pod_spec(kustomization)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_user is not None
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_user[1]) != 0
    assert pod["securityContext"]["runAsGroup"] == int(dockerfile_user[2])
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert all("hostPath" not in volume for volume in pod["volumes"])
    for spec in pod["containers"]:
        context = spec["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context.get("privileged", False) is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert "add" not in context["capabilities"]
        for bound in ("requests", "limits"):
            assert set(spec["resources"][bound]) == {"cpu", "memory"}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_probes_ask_the_exporter_on_its_metrics_port(kustomization: str) -> None:
    spec = container(workload(render(kustomization)))
    assert spec["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    args = parse_args([a for a in spec["args"] if not a.startswith("--shard.")])
    assert args.listen_address == f":{PORT}"
    assert spec["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    # A restart while the databases are slow would not help: liveness gives it 30 s.
    liveness = spec["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30


def mounts(spec: dict[str, Any]) -> dict[str, str]:
    return {mount["name"]: mount["mountPath"] for mount in spec["volumeMounts"]}


def configuration(resources: list[Resource]) -> tuple[Path, str]:
    """The --config.file path and that file's text, as the pod will see it."""
    resource = workload(resources)
    spec = container(resource)
    args = parse_args([a for a in spec["args"] if not a.startswith("--shard.")])
    volumes = {v["name"]: v for v in resource["spec"]["template"]["spec"]["volumes"]}
    for name, path in mounts(spec).items():
        if args.config_file.parent == Path(path) and "configMap" in volumes[name]:
            config_map_name = volumes[name]["configMap"]["name"]
            config_map = next(
                m
                for m in of_kind(resources, "ConfigMap")
                if m["metadata"]["name"] == config_map_name
            )
            return args.config_file, config_map["data"][args.config_file.name]
    raise AssertionError(f"{args.config_file} is in no mounted ConfigMap")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_configuration_comes_from_a_config_map_and_is_valid(kustomization: str) -> None:
    path, text = configuration(render(kustomization))
    config = parse_config(text, str(path))
    assert config.stores


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_store_passwords_are_files_of_a_secret(kustomization: str) -> None:
    resources = render(kustomization)
    resource = workload(resources)
    spec = container(resource)
    volumes = {v["name"]: v for v in resource["spec"]["template"]["spec"]["volumes"]}
    secret_volumes = [name for name, volume in volumes.items() if "secret" in volume]
    assert len(secret_volumes) == 1
    secret_volume = volumes[secret_volumes[0]]
    assert secret_volume["secret"]["secretName"] == SECRET
    # Readable by the exporter's group (fsGroup) only.
    assert secret_volume["secret"]["defaultMode"] & 0o007 == 0
    secret_mount = next(m for m in spec["volumeMounts"] if m["name"] == secret_volumes[0])
    assert secret_mount["readOnly"] is True
    _, text = configuration(resources)
    for store in parse_config(text).stores:
        assert store.password_file is not None, store.name
        assert store.password_file.parent == Path(secret_mount["mountPath"]), store.name
        assert store.password_env is None, store.name
        assert make_url(store.url).password is None, store.name
    # No password anywhere in the environment, and no Secret in the manifests themselves.
    assert all("secretKeyRef" not in str(env) for env in spec.get("env", []))
    assert not of_kind(resources, "Secret")


def test_the_image_is_this_release() -> None:
    image = container(workload(render("base")))["image"]
    assert image == f"crmsync-exporter:{__version__}"


def test_the_example_takes_the_image_from_a_registry() -> None:
    image = container(workload(render("overlays/example")))["image"]
    assert image == f"registry.example.com/crmsync-exporter:{__version__}"


# --- Service, ServiceMonitor, NetworkPolicy ------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_prometheus_finds_the_pods_through_the_service(kustomization: str) -> None:
    resources = render(kustomization)
    pod_labels = workload(resources)["spec"]["template"]["metadata"]["labels"]
    service = one(resources, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": PORT, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert matches(service["spec"]["selector"], pod_labels)
    monitor = one(resources, "ServiceMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["metadata"].get("namespace") == service["metadata"].get("namespace")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # The alert pack and the dashboards select job="crmsync" (alerts/config.yaml).
    selector = yaml.safe_load((ROOT / "alerts" / "config.yaml").read_text())["selector"]
    assert selector == 'job="crmsync"'
    assert {"action": "replace", "targetLabel": "job", "replacement": "crmsync"} in endpoint[
        "relabelings"
    ]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_network_policy_lets_in_prometheus_and_out_dns_and_databases(
    kustomization: str,
) -> None:
    resources = render(kustomization)
    pod_labels = workload(resources)["spec"]["template"]["metadata"]["labels"]
    policy = one(resources, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], pod_labels)
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"]
    for peer in ingress["from"]:
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
        assert "ipBlock" not in peer
    allowed = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 3306)}
    dns = [r for r in policy["egress"] if {p["port"] for p in r["ports"]} == {53}]
    assert dns[0]["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_the_example_reaches_only_its_database_servers() -> None:
    policy = one(render("overlays/example"), "NetworkPolicy")["spec"]
    databases = [r for r in policy["egress"] if 53 not in {p["port"] for p in r["ports"]}]
    assert databases
    assert all(rule["to"] for rule in databases)
    assert all("ipBlock" in peer for rule in databases for peer in rule["to"])


def test_the_example_is_selected_by_kube_prometheus_stack() -> None:
    for resource in operator_resources("overlays/example"):
        assert resource["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("kustomization", ["overlays/example", "overlays/sharded"])
def test_the_overlays_install_into_their_namespace(kustomization: str) -> None:
    resources = render(kustomization)
    namespace = one(resources, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for resource in resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == namespace["metadata"]["name"]


# --- the StatefulSet -----------------------------------------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of a container's args (unknown names stay as they are)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def pod_args(statefulset: Resource, ordinal: int) -> list[str]:
    """The args pod ``ordinal`` runs with, its variables filled in as the kubelet would."""
    spec = container(statefulset)
    env: dict[str, str] = {}
    for variable in spec["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            field = variable["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
            env[variable["name"]] = str(ordinal)
    return [expand(arg, env) for arg in spec["args"]]


def test_the_sharded_overlay_is_a_statefulset_of_shards() -> None:
    resources = render("overlays/sharded")
    assert not of_kind(resources, "Deployment")
    statefulset = one(resources, "StatefulSet")
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3
    spec = container(statefulset)
    assert "--shard.index=$(SHARD_INDEX)" in spec["args"]
    assert "--shard.count=$(SHARD_COUNT)" in spec["args"]
    assert {"name": "SHARD_COUNT", "value": str(replicas)} in spec["env"]
    service = one(resources, "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"


def test_the_statefulset_runs_the_deployments_pod_with_the_shard_flags() -> None:
    deployment = one(render("overlays/example"), "Deployment")["spec"]["template"]
    statefulset = one(render("overlays/sharded"), "StatefulSet")["spec"]["template"]
    shard_spec = statefulset["spec"]["containers"][0]
    shard_spec["args"] = [a for a in shard_spec["args"] if not a.startswith("--shard.")]
    del shard_spec["env"]
    assert statefulset == deployment


def _split(statefulset: Resource, config_text: str) -> Iterator[tuple[int, Shard, list[str]]]:
    config = parse_config(config_text)
    for ordinal in range(statefulset["spec"]["replicas"]):
        args = parse_args(pod_args(statefulset, ordinal))
        shard = parse_shard(args.shard_index, args.shard_count)
        yield ordinal, shard, [store.name for store in shard.select(config.stores)]


def test_the_pods_split_the_stores_by_ordinal() -> None:
    resources = render("overlays/sharded")
    statefulset = one(resources, "StatefulSet")
    _, text = configuration(resources)
    names = [store.name for store in parse_config(text).stores]
    collected: list[str] = []
    for ordinal, shard, kept in _split(statefulset, text):
        assert (shard.index, shard.count) == (ordinal, statefulset["spec"]["replicas"])
        assert kept, f"pod {ordinal} has no store: pick names or a count that spread them"
        collected += kept
    assert sorted(collected) == sorted(names)


def test_each_pod_checks_its_shard_of_the_configuration(tmp_path: Path) -> None:
    """What each pod would run, run for real with --config.check (passwords in tmp_path)."""
    resources = render("overlays/sharded")
    statefulset = one(resources, "StatefulSet")
    path, text = configuration(resources)
    secrets_dir = Path(mounts(container(statefulset))["store-passwords"])
    stores = parse_config(text).stores
    for store in stores:
        assert store.password_file is not None
        (tmp_path / store.password_file.name).write_text("not-the-real-one\n")
    local = tmp_path / path.name
    local.write_text(text.replace(f"{secrets_dir}/", f"{tmp_path}/"))
    for ordinal, shard, kept in _split(statefulset, text):
        args = [a for a in pod_args(statefulset, ordinal) if not a.startswith("--config.file")]
        result = subprocess.run(
            [sys.executable, "-m", "exporter", f"--config.file={local}", "--config.check", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == (
            f"shard {ordinal} of {shard.count}: {len(kept)} store(s): {', '.join(kept)}"
        )


def test_the_shard_count_follows_the_replicas(tmp_path: Path) -> None:
    copy_root = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy_root, ignore=shutil.ignore_patterns("__pycache__"))
    kustomization = copy_root / "overlays" / "sharded" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("count: 3") == 1
    kustomization.write_text(text.replace("count: 3", "count: 5"))

    statefulset = one(render_directory(kustomization.parent), "StatefulSet")

    assert statefulset["spec"]["replicas"] == 5
    assert {"name": "SHARD_COUNT", "value": "5"} in container(statefulset)["env"]
    assert parse_args(pod_args(statefulset, 4)).shard_count == "5"
