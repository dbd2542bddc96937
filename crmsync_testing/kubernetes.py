"""Helpers of the Kubernetes tests: rendering a kustomization with kubectl, picking resources."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from crmsync_testing.servers import unavailable

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ("base", "overlays/example", "overlays/sharded")
MIN_KUSTOMIZE = (5, 0)  # components and replacements as the manifests use them

Resource = dict[str, Any]


def kubectl() -> str:
    """kubectl with a kustomize recent enough; else the test is unavailable."""
    path = shutil.which("kubectl")
    if path is None:
        unavailable("kubectl is not installed (it renders the manifests with kustomize)")
        raise AssertionError  # unreachable
    version = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    found = json.loads(version.stdout or "{}").get("kustomizeVersion", "")
    numbers = tuple(int(part) for part in re.findall(r"\d+", found)[:2])
    if numbers < MIN_KUSTOMIZE:
        unavailable(
            f"kubectl embeds kustomize {found or '?'}; the manifests need v5 (kubectl 1.27+)"
        )
    return path


def render_directory(directory: Path) -> list[Resource]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@functools.cache
def _rendered(kustomization: str) -> tuple[str, ...]:
    # Kept as text: every test gets resources of its own to look at or change.
    return tuple(yaml.safe_dump(r) for r in render_directory(KUBERNETES / kustomization))


def render(kustomization: str) -> list[Resource]:
    """``kubectl kustomize deploy/kubernetes/<kustomization>``, one dict per resource."""
    return [yaml.safe_load(text) for text in _rendered(kustomization)]


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [resource for resource in resources if resource["kind"] == kind]


def one(resources: list[Resource], kind: str) -> Resource:
    found = of_kind(resources, kind)
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def workload(resources: list[Resource]) -> Resource:
    """The exporter's Deployment or StatefulSet (exactly one of them)."""
    found = [r for r in resources if r["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, [r["kind"] for r in found]
    return found[0]


def container(resource: Resource) -> Resource:
    containers = resource["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["exporter"]
    return dict(containers[0])


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
