"""deploy/kubernetes and deploy/kserve, rendered by kustomize and checked as a cluster would check them.

- Every built-in object validates strictly (unknown fields are errors) with kubernetes-validate against
  two current Kubernetes versions; an object whose schema is missing fails.
- Every custom resource (ServiceMonitor, ServingRuntime, InferenceService) validates with jsonschema
  against its CRD's openAPIV3Schema (tests/data/crds, with their sources), tightened so that an
  unknown field fails as `kubectl apply`'s strict field validation makes it fail.
- The container args and env name only flags that exist, with values the server accepts.
- The probes' ports and paths (HTTP) or services (KServe's gRPC), read from the manifests, pass on a
  real ready server; the HTTP probes keep passing while a flooded server's gRPC cancels calls; the
  shutdown timing in the manifests holds against a real server.
- The prometheus-adapter rules, filled in as prometheus-adapter fills them, return values from a real
  Prometheus scraping a real server under traffic; they merge into kube-prometheus's adapter
  configuration without touching its resourceRules; the autoscaling folder registers the custom
  metrics API and nothing that would replace a shared object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import functools
import importlib.resources
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from conftest import ROOT, Server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import identity, slow, write_config
from prom import PROMETHEUS, query, running_prometheus
from referencing import Registry, Resource
from tensorgate import settings
from tritonclient.grpc import service_pb2

Doc = dict[str, Any]

KUBECTL = shutil.which("kubectl")
DEPLOY = ROOT / "deploy"
TREES = {
    "base": DEPLOY / "kubernetes" / "base",
    "cpu": DEPLOY / "kubernetes" / "overlays" / "cpu",
    "gpu": DEPLOY / "kubernetes" / "overlays" / "gpu",
    "autoscaling": DEPLOY / "kubernetes" / "autoscaling",
    "kserve": DEPLOY / "kserve",
}
OVERLAYS = ("cpu", "gpu")
SERVERS = ("cpu", "gpu", "kserve")  # trees with a tensorgate server in them
# Two current Kubernetes versions, both bundled by kubernetes-validate 1.37 (1.25 to 1.37).
K8S_VERSIONS = ("1.36", "1.37")
CRDS = Path(__file__).resolve().parent / "data" / "crds"
CRD_GROUPS = ("monitoring.coreos.com", "serving.kserve.io")
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
DEFAULT_GRACE_SECS = 30  # a pod's terminationGracePeriodSeconds when its spec sets none
ADAPTER_RULES = DEPLOY / "kubernetes" / "autoscaling" / "adapter-rules.yaml"


# ---- rendering ----


@functools.cache
def _kustomize(tree: str) -> tuple[Doc, ...]:
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(TREES[tree])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {TREES[tree]} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def rendered(tree: str) -> list[Doc]:
    """The objects of a tree as `kubectl kustomize` renders them (a fresh copy each call)."""
    if KUBECTL is None:
        pytest.skip("no kubectl binary (with its kustomize) to render deploy/: install kubectl")
    return copy.deepcopy(list(_kustomize(tree)))


def group_of(doc: Doc) -> str:
    api_version: str = doc["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def is_custom(doc: Doc) -> bool:
    return group_of(doc) in CRD_GROUPS


def the(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    spec: Doc = the(docs, "Deployment", "tensorgate")["spec"]["template"]["spec"]
    return spec


def server_container(tree: str, docs: list[Doc]) -> Doc:
    if tree == "kserve":
        runtime = the(docs, "ServingRuntime")
        return next(c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container")
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "tensorgate")


def config_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The environment a container gets from its envFrom ConfigMaps and its env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom other than a ConfigMap: {source}"
        env.update(the(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        assert "value" in var, f"{container['name']}: {var['name']} is not a plain value"
        env[var["name"]] = var["value"]
    return env


def serve_settings(docs: list[Doc], container: Doc) -> settings.Settings:
    """The settings the container's server runs with: its flags over its TENSORGATE_* environment."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    settings.add_arguments(parser, environ=config_env(docs, container))
    return settings.from_namespace(parser.parse_args(tensorgate_flags(container)))


def tensorgate_flags(container: Doc) -> list[str]:
    """The flags after `tensorgate serve` / `tensorgate build` (the image's entrypoint is `tensorgate serve`)."""
    command = container.get("command", [])
    assert command in ([], ["tensorgate", "serve"], ["tensorgate", "build"]), f"unexpected command {command}"
    return [str(a) for a in container.get("args", [])]


def subcommand(container: Doc) -> str:
    command = container.get("command", [])
    return str(command[1]) if command else "serve"


def tensorgate_containers(tree: str, docs: list[Doc]) -> list[Doc]:
    """Every container that runs the tensorgate image (the server, the build init container)."""
    if tree == "kserve":
        return [server_container(tree, docs)]
    spec = pod_spec(docs)
    return [c for c in spec.get("initContainers", []) + spec["containers"] if image_name(c) == "tensorgate"]


def image_name(container: Doc) -> str:
    return str(container["image"]).rsplit("/", 1)[-1].split(":")[0]


# ---- schemas ----


@functools.cache
def _k8s_definitions(version: str) -> Doc:
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (root / f"v{version}.0-local-strict" / "_definitions.json").read_text()
    definitions: Doc = json.loads(text)
    assert definitions["$id"] == K8S_DEFINITIONS
    return definitions


def _crd_files() -> dict[tuple[str, str], Path]:
    """(group, kind) -> the CRD file under tests/data/crds."""
    found = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        found[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = path
    return found


def structural(schema: Any) -> Any:
    """A CRD's OpenAPI v3 schema as JSON Schema, as strict as the API server with strict field
    validation: an object that lists properties and does not preserve unknown fields rejects others
    (the API server prunes them, or with kubectl's default --validate=strict refuses them); `nullable`
    admits null."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural(v) if k not in ("enum", "required", "default") else v for k, v in schema.items()}
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(group: str, kind: str, api_version: str, k8s_version: str) -> jsonschema.Draft202012Validator:
    files = _crd_files()
    assert (group, kind) in files, f"no CRD for {group} {kind} under {CRDS}: add it (with its source) there"
    crd = yaml.safe_load(files[(group, kind)].read_text())
    version = api_version.split("/")[1]
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    assert served, f"{files[group, kind].name} serves no version {version} of {kind}"
    schema = structural(served[0]["schema"]["openAPIV3Schema"])
    # The API server validates every object's metadata as an ObjectMeta, whatever the CRD says.
    schema["properties"]["metadata"] = {
        "$ref": f"{K8S_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    registry: Registry = Resource.from_contents(_k8s_definitions(k8s_version)) @ Registry()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def crd_errors(doc: Doc, k8s_version: str) -> list[str]:
    validator = _crd_validator(group_of(doc), doc["kind"], doc["apiVersion"], k8s_version)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def builtin_errors(doc: Doc, k8s_version: str) -> list[str]:
    try:
        used = kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema: {exc.message} (a removed API version, or a CRD with no file under tests/data/crds)"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    assert used == k8s_version, f"validated against {used}, not {k8s_version}"
    return []


def errors(doc: Doc, k8s_version: str) -> list[str]:
    return crd_errors(doc, k8s_version) if is_custom(doc) else builtin_errors(doc, k8s_version)


def name_of(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("tree", list(TREES))
def test_every_object_validates_strictly(tree: str, k8s_version: str) -> None:
    docs = rendered(tree)
    assert docs
    found = {name_of(d): errors(d, k8s_version) for d in docs}
    assert not {k: v for k, v in found.items() if v}, json.dumps(found, indent=1)


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_crd_data_files_are_valid_crds(k8s_version: str) -> None:
    files = _crd_files()
    assert set(files) == {
        ("monitoring.coreos.com", "ServiceMonitor"),
        ("serving.kserve.io", "ServingRuntime"),
        ("serving.kserve.io", "InferenceService"),
    }
    for path in files.values():
        assert builtin_errors(yaml.safe_load(path.read_text()), k8s_version) == [], path.name
        assert "commit" in path.read_text().split("apiVersion:")[0], f"{path.name}: say where it came from"


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation that sets a dotted path (list indices as numbers) in an object."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def _drop(path: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return mutate


POD = "spec.template.spec"
MISTAKES = [
    ("cpu", "Deployment", _set(f"{POD}.containers.0.livenessProbe.httpGet.pth", "/v2/health/live")),
    ("cpu", "Deployment", _set(f"{POD}.containers.0.readinessProbe.httpGet.path", 8000)),
    ("autoscaling", "APIService", _set("spec.service.prot", 443)),
    ("autoscaling", "APIService", _drop("spec.groupPriorityMinimum")),
    ("gpu", "Deployment", _set(f"{POD}.initContainers.1.securityContext.readOnlyRootFilesystm", True)),
    ("cpu", "HorizontalPodAutoscaler", _set("spec.metrics.0.pods.target.averageValu", "1")),
    ("cpu", "Service", _set("spec.ports.0.appProtcol", "grpc")),
    ("cpu", "ServiceMonitor", _set("spec.endpoints.0.intervall", "10s")),
    ("cpu", "ServiceMonitor", _set("spec.endpoints.0.interval", "10 seconds")),
    ("cpu", "ServiceMonitor", _drop("spec.selector")),
    ("cpu", "ServiceMonitor", _set("metadata.label", {"a": "b"})),
    ("kserve", "ServingRuntime", _set("spec.protocolVersion", "grpc-v2")),
    ("kserve", "ServingRuntime", _set("spec.supportedModelFormats.0.autoselect", True)),
    ("kserve", "ServingRuntime", _set("spec.containers.0.readinessProbe.grpc.servic", "readiness")),
    ("kserve", "ServingRuntime", _set("spec.containers.0.ports.0.containerPort", "9000")),
    ("kserve", "InferenceService", _set("spec.predictor.model.protocolversion", "grpc-v2")),
    ("kserve", "InferenceService", _drop("spec.predictor.model.modelFormat.name")),
    ("kserve", "InferenceService", _set("spec.predictor.model.resources.limit", {"cpu": "1"})),
]


@pytest.mark.parametrize(
    ("tree", "kind", "mistake"), MISTAKES, ids=[f"{t}-{k}-{i}" for i, (t, k, _) in enumerate(MISTAKES)]
)
def test_validation_catches_mistakes(tree: str, kind: str, mistake: Callable[[Doc], None]) -> None:
    """The checks above can fail: each of these typos or wrong types is refused, in both versions."""
    doc = the(rendered(tree), kind)
    assert all(errors(doc, v) == [] for v in K8S_VERSIONS)
    mistake(doc)
    for version in K8S_VERSIONS:
        assert errors(doc, version), f"{kind} with a mistake passed validation for {version}"


# ---- what the manifests must say, beyond their schemas ----


def _probes(container: Doc) -> dict[str, Doc]:
    return {
        kind: container[f"{kind}Probe"] for kind in ("startup", "liveness", "readiness") if f"{kind}Probe" in container
    }


HEALTH_PATHS = {"startup": "/v2/health/ready", "liveness": "/v2/health/live", "readiness": "/v2/health/ready"}


def _port_number(container: Doc, port: int | str) -> int:
    """A probe's port as a number: a container port's name resolved as the kubelet resolves it."""
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert len(found) == 1, f"no container port named {port!r}"
    return int(found[0])


def _only_handler(kind: str, probe: Doc) -> str:
    handlers = {"exec", "httpGet", "tcpSocket", "grpc"} & set(probe)
    assert len(handlers) == 1, f"{kind}: one handler, not {handlers}"  # (kubernetes-validate cannot see two)
    return handlers.pop()


@pytest.mark.parametrize("tree", OVERLAYS)
def test_probes_are_http_health_checks_on_the_http_port(tree: str) -> None:
    """The Deployment probes GET /v2/health/live and /v2/health/ready on the HTTP port, not gRPC health:
    gRPC health checks wait behind --grpc-max-pending-calls with every other call and are cancelled
    when an overloaded server sheds calls (test_http_probes_pass_while_grpc_sheds_calls)."""
    docs = rendered(tree)
    container = server_container(tree, docs)
    served = serve_settings(docs, container)
    assert served.http_port > 0, "the probes need the HTTP/REST port"
    assert served.grpc_restricted_protocol is None or "health" not in served.grpc_restricted_protocol.protocols
    port_names = {p["containerPort"]: p.get("name") for p in container["ports"]}
    assert port_names.get(served.grpc_port) == "grpc" and port_names.get(served.http_port) == "http", port_names
    probes = _probes(container)
    assert set(probes) == {"startup", "liveness", "readiness"}
    for kind, probe in probes.items():
        assert _only_handler(kind, probe) == "httpGet", f"{kind}: an HTTP GET, not {probe}"
        get = probe["httpGet"]
        assert _port_number(container, get["port"]) == served.http_port, f"{kind} probes {get['port']}"
        assert get.get("scheme", "HTTP") == "HTTP" and "host" not in get, get
        # startup on readiness: on liveness it would pass as soon as the port listens; on readiness it
        # bounds the load time
        assert get["path"] == HEALTH_PATHS[kind], f"{kind} probes {get['path']}"
    budget = probes["startup"]["periodSeconds"] * probes["startup"]["failureThreshold"]
    assert budget >= (1200 if tree == "gpu" else 600), f"{tree}: {budget} s to load the models"
    live = probes["liveness"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30, "a busy server must not be restarted at once"


def test_kserve_probes_are_grpc_health_checks_on_the_grpc_port() -> None:
    """The ServingRuntime keeps gRPC probes on its one container port: in Serverless mode Knative moves
    a liveness httpGet to the container port (the gRPC one), see deploy/kserve/servingruntime.yaml."""
    docs = rendered("kserve")
    container = server_container("kserve", docs)
    grpc_port = serve_settings(docs, container).grpc_port
    assert [p["containerPort"] for p in container["ports"]] == [grpc_port]
    assert container["ports"][0]["name"] == "h2c"
    probes = _probes(container)
    assert set(probes) == {"liveness", "readiness"}
    for kind, probe in probes.items():
        assert _only_handler(kind, probe) == "grpc"
        assert probe["grpc"]["port"] == grpc_port, f"{kind} probes port {probe['grpc']['port']}, gRPC is on {grpc_port}"
    assert probes["liveness"]["grpc"]["service"] == "liveness"
    assert probes["readiness"]["grpc"]["service"] == "readiness"
    live = probes["liveness"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30, "a busy server must not be restarted at once"


@pytest.mark.parametrize("tree", SERVERS)
def test_shutdown_timing(tree: str) -> None:
    """SIGTERM: readiness off, requests still accepted for the drain delay, then in flight ones finish;
    the process is gone within the exit timeout (from the signal), before the grace period ends."""
    docs = rendered(tree)
    container = server_container(tree, docs)
    env = config_env(docs, container)
    drain = float(env["TENSORGATE_DRAIN_DELAY_SECS"])
    exit_timeout = serve_settings(docs, container).exit_timeout_secs
    grace = DEFAULT_GRACE_SECS if tree == "kserve" else pod_spec(docs)["terminationGracePeriodSeconds"]
    assert 0 < drain < exit_timeout < grace, (drain, exit_timeout, grace)
    assert exit_timeout - drain >= 20, "requests in flight when the drain delay ends need time to finish"
    assert grace - exit_timeout >= 5, "the process needs a moment after the exit timeout to be gone"
    assert "lifecycle" not in container, "no preStop: the drain delay keeps the pod serving while endpoints update"


@pytest.mark.parametrize("tree", OVERLAYS)
def test_pod_starts_warm_from_the_engine_cache(tree: str) -> None:
    docs = rendered(tree)
    spec = pod_spec(docs)
    inits = {c["name"]: c for c in spec["initContainers"]}
    assert list(inits) == ["models", "build"], "models are copied before `tensorgate build` loads them"
    build, server = inits["build"], server_container(tree, docs)
    assert build["command"] == ["tensorgate", "build"]
    assert build["image"] == server["image"] and build["envFrom"] == server["envFrom"], "build as the server serves"
    served = serve_settings(docs, server)
    assert serve_settings(docs, build) == served
    volumes = {v["name"]: v for v in spec["volumes"]}

    def mounts(container: Doc) -> dict[str, Doc]:
        found = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert all(m["name"] in volumes for m in found.values())
        return found

    for container in (build, server):
        at = mounts(container)
        assert str(served.model_repository) in at and at[str(served.model_repository)].get("readOnly") is True
        assert str(served.engine_cache_dir) in at and not at[str(served.engine_cache_dir)].get("readOnly")
        assert "/tmp" in at  # the root filesystem is read-only
    models_volume = mounts(server)[str(served.model_repository)]["name"]
    assert [m["name"] for m in inits["models"]["volumeMounts"]] == [models_volume]
    cache = volumes[mounts(server)[str(served.engine_cache_dir)]["name"]]
    if tree == "gpu":  # shared by every replica, so an engine is built once
        assert set(cache) == {"name", "persistentVolumeClaim"}, cache
        claim = the(docs, "PersistentVolumeClaim", cache["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
        assert set(cache) == {"name", "emptyDir"}, cache


@pytest.mark.parametrize("tree", SERVERS)
def test_containers_are_locked_down(tree: str) -> None:
    docs = rendered(tree)
    if tree == "kserve":
        containers = [server_container(tree, docs)]
        pod: Doc = {}
    else:
        pod = pod_spec(docs)["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000 and pod["fsGroup"] == 1000
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        containers = pod_spec(docs)["initContainers"] + pod_spec(docs)["containers"]
    for container in containers:
        context = {**pod, **container["securityContext"]}
        assert context.get("runAsNonRoot") is True and context.get("runAsUser") == 1000, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]


@pytest.mark.parametrize("tree", OVERLAYS)
def test_overlay_image_and_gpus(tree: str) -> None:
    docs = rendered(tree)
    spec = pod_spec(docs)
    for container in tensorgate_containers(tree, docs):
        assert container["image"] == f"tensorgate:{tree}"
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if tree == "gpu" else None), f"{container['name']}: nvidia.com/gpu {gpus}"
    if tree == "gpu":
        assert "nodeSelector" not in spec  # the nvidia.com/gpu limit places pods; no node label is assumed
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    else:
        assert "nodeSelector" not in spec and "tolerations" not in spec


def _selects(selector: Doc, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "APIService",
                  "PriorityClass", "StorageClass", "ClusterServingRuntime"}  # fmt: skip


@pytest.mark.parametrize("tree", OVERLAYS)
def test_every_namespaced_object_is_in_the_namespace(tree: str) -> None:
    """`kubectl apply -k` puts an object without a namespace in the kubeconfig's current one: an
    overlay's own objects (the GPU engine cache's claim) must be in the server's namespace too."""
    docs = rendered(tree)
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    assert namespaces == {"tensorgate"}
    stray = [(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] not in CLUSTER_SCOPED
             and d["metadata"].get("namespace") != "tensorgate"]  # fmt: skip
    assert not stray, stray


@pytest.mark.parametrize("tree", OVERLAYS)
def test_selectors_and_names_connect(tree: str) -> None:
    docs = rendered(tree)
    deployment = the(docs, "Deployment", "tensorgate")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"], pod_labels)
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    service = the(docs, "Service", "tensorgate")
    assert _selects({"matchLabels": service["spec"]["selector"]}, pod_labels)
    container_ports = {p["name"]: p["containerPort"] for p in server_container(tree, docs)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc" and ports["grpc"]["targetPort"] in container_ports
    assert set(ports) == {"grpc", "http", "metrics"} and ports["metrics"]["targetPort"] in container_ports
    assert ports["http"]["targetPort"] in container_ports
    assert _selects(the(docs, "PodDisruptionBudget")["spec"]["selector"], pod_labels)
    monitor = the(docs, "ServiceMonitor")
    assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # the adapter's avg_time_queue_us takes delta()s over 30 s: two scrapes in every window
    assert _duration_secs(endpoint["interval"]) <= 15
    # job="<service name>" on the Operator's scrapes: the rules' TensorgateScrapeDown matches "tensorgate"
    assert "tensorgate" in service["metadata"]["name"]
    hpa = the(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot survive a disruption budget of one"
    served = {rule_metric_name(r) for r in adapter_rules()}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods", "per-pod custom metrics"
        assert metric["pods"]["metric"]["name"] in served, f"no prometheus-adapter rule serves {metric}"


def _duration_secs(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?", text)
    assert parts and text, f"not a duration: {text}"
    return sum(int(n) * units[u] for n, u in zip(parts.groups(), ("h", "m", "s", "ms"), strict=True) if n)


def _admits(
    policy: Doc,
    policy_namespace: str,
    ports: Mapping[str, int],
    *,
    namespace: str,
    labels: Mapping[str, str],
    port: str,
) -> bool:
    """Whether a NetworkPolicy admits TCP to ``port`` (a container port name) of its pods from a pod of
    ``namespace`` with ``labels`` (the namespace's labels: its name label only)."""
    ns_labels = {NAMESPACE_LABEL: namespace}
    for rule in policy["spec"].get("ingress", []):
        rule_ports = rule.get("ports")
        if rule_ports and not any(
            p.get("protocol", "TCP") == "TCP" and p.get("port") in (port, ports[port]) for p in rule_ports
        ):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            ns_ok = (
                namespace == policy_namespace
                if "namespaceSelector" not in peer
                else _selects(peer["namespaceSelector"], ns_labels)
            )
            pod_ok = "podSelector" not in peer or _selects(peer["podSelector"], labels)
            if ns_ok and pod_ok:
                return True
    return False


@pytest.mark.parametrize("tree", OVERLAYS)
def test_network_policy(tree: str) -> None:
    docs = rendered(tree)
    policy = the(docs, "NetworkPolicy")
    deployment = the(docs, "Deployment")
    assert _selects(policy["spec"]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"]: p["containerPort"] for p in server_container(tree, docs)["ports"]}
    ns = deployment["metadata"]["namespace"]
    client = {"tensorgate.io/client": "true"}
    cases = [  # (namespace, pod labels, port, admitted)
        (ns, {}, "grpc", True),
        (ns, {}, "http", True),
        (ns, {}, "metrics", False),
        ("apps", {}, "grpc", False),
        ("apps", {}, "http", False),
        ("apps", client, "grpc", True),
        ("apps", client, "http", True),
        ("apps", client, "metrics", False),
        ("monitoring", {"app.kubernetes.io/name": "prometheus"}, "metrics", True),
        ("monitoring", {"app.kubernetes.io/name": "prometheus"}, "grpc", False),
    ]
    for namespace, labels, port, expected in cases:
        got = _admits(policy, ns, ports, namespace=namespace, labels=labels, port=port)
        assert got == expected, f"from {namespace} {labels} to {port}: admitted {got}"


def test_kserve_runtime_conventions() -> None:
    docs = rendered("kserve")
    runtime, service = the(docs, "ServingRuntime"), the(docs, "InferenceService")
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["grpc-v2"]
    assert {"name": "onnx", "version": "1", "autoSelect": True} in [
        {k: f[k] for k in ("name", "version", "autoSelect") if k in f} for f in spec["supportedModelFormats"]
    ]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    served = serve_settings(docs, container)
    assert (str(served.model_repository), served.grpc_port) == ("/mnt/models", 9000)
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": str(served.metrics_port),
        "prometheus.kserve.io/path": "/metrics",
    }
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] == {"name": "onnx", "version": "1"}


# ---- flags ----


@functools.cache
def _help(command: str) -> tuple[frozenset[str], frozenset[str]]:
    """(flags, TENSORGATE_* variables) that `tensorgate COMMAND --help` documents."""
    done = subprocess.run(
        [sys.executable, "-m", "tensorgate", command, "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout)), frozenset(
        re.findall(r"TENSORGATE_[A-Z0-9_]+", done.stdout)
    )


def _service_links(docs: list[Doc]) -> set[str]:
    """The variables Kubernetes puts in a pod for every Service of its namespace, unless enableServiceLinks is false."""
    names = set()
    for service in (d for d in docs if d["kind"] == "Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        names |= {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
        for port in service["spec"]["ports"]:
            tcp = f"{prefix}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
            names |= {tcp, f"{tcp}_PROTO", f"{tcp}_PORT", f"{tcp}_ADDR"}
            if "name" in port:
                names.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
    return names


@pytest.mark.parametrize("tree", SERVERS)
def test_args_and_env_name_only_real_flags(tree: str) -> None:
    docs = rendered(tree)
    known_env = {settings.env_name(f) for f in settings.Settings.__dataclass_fields__}
    for container in tensorgate_containers(tree, docs):
        command = subcommand(container)
        flags, documented_env = _help(command)
        env = set(config_env(docs, container))
        if tree != "kserve" and pod_spec(docs).get("enableServiceLinks", True):
            env |= _service_links(docs)
        ours = sorted(k for k in env if k.startswith("TENSORGATE_"))
        assert ours, f"{container['name']}: no TENSORGATE_* settings at all?"
        unknown = [k for k in ours if k not in known_env or k not in documented_env]
        assert not unknown, f"{container['name']}: {unknown} are not settings of `tensorgate {command}`"
        given = [a.split("=", 1)[0] for a in tensorgate_flags(container) if a.startswith("--")]
        assert not [f for f in given if f not in flags], f"{container['name']}: unknown flags in {given}"
        try:  # and the values parse: what the process would do with them at start
            serve_settings(docs, container)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f"{container['name']}: `tensorgate {command}` refuses its args/env: {exc}")


# ---- against a real server ----


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models, and `batched`: an identity that waits up to 2 ms to fill a batch, so every
    request spends time in the queue (the autoscaling metric's numerator)."""
    path = tmp_path_factory.mktemp("repo") / "repo"
    shutil.copytree(ROOT / "model_repo", path)
    identity(path / "batched" / "1" / "model.onnx")
    write_config(path / "batched", "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n")
    return path


def _health(url: str, service: str, timeout: float = 5.0) -> str:
    with grpc.insecure_channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name} ({exc.details()})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def _get(port: int, path: str, timeout: float) -> int | str:
    """An HTTP GET on a new connection, as the kubelet probes: the status, or the error."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _probe(container: Doc, probe: Doc, grpc_url: str, http_port: int) -> str:
    """One probe's call as the kubelet makes it, on the test server's port for the manifest's port
    (checked to be the server's gRPC or HTTP port by the tests above): 'pass' or what it got."""
    timeout = probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        status = _get(http_port, probe["httpGet"]["path"], timeout)
        return "pass" if isinstance(status, int) and 200 <= status < 400 else f"HTTP {status}"
    answer = _health(grpc_url, probe["grpc"].get("service", ""), timeout)
    return "pass" if answer == "SERVING" else answer


@pytest.mark.parametrize("tree", SERVERS)
def test_probes_pass_on_a_ready_server(tree: str, server: Server) -> None:
    """Each probe's call (the manifest's path or service, on the port the manifest configures, which is
    the test server's port here) as the kubelet makes it: HTTP 200-399, or gRPC SERVING."""
    docs = rendered(tree)
    container = server_container(tree, docs)
    answers = {
        kind: _probe(container, probe, server.url, server.http_port) for kind, probe in _probes(container).items()
    }
    assert set(answers.values()) == {"pass"}, answers


def test_http_probes_answer_400_when_not_ready(start_server: Callable[..., Server], tmp_path: Path) -> None:
    """/v2/health/ready fails (400) while the models load and passes once they are loaded; liveness
    passes throughout: the 200/400 the probes rely on, from a real server."""
    docs = rendered("cpu")
    container = server_container("cpu", docs)
    probes = _probes(container)
    slow_repo = tmp_path / "slow-repo"
    slow(slow_repo / "slow" / "1" / "model.onnx")
    # warmup runs (a second or two here) keep the server loading (listening, not ready) long enough to look
    sample = (
        'batch_size: 2 count: 1000 inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [512] zero_data: true } }'
    )
    write_config(
        slow_repo / "slow", f'max_batch_size: 8\nmodel_warmup [{{ name: "a" {sample} }}, {{ name: "b" {sample} }}]\n'
    )
    server = start_server(slow_repo, wait_ready=False)
    deadline = time.monotonic() + 30
    seen: list[tuple[str, str]] = []
    while time.monotonic() < deadline and "event=server_ready" not in server.log:
        if "event=http_listening" in server.log:
            port = server.http_port
            seen.append(
                (
                    _probe(container, probes["liveness"], server.url, port),
                    _probe(container, probes["readiness"], server.url, port),
                )
            )
        time.sleep(0.05)
    server.wait_ready()
    port = server.http_port
    assert "event=model_ready model=slow" in server.log, server.log
    assert ("pass", "HTTP 400") in seen, f"(liveness, readiness) while loading: {seen}"
    assert all(live == "pass" for live, _ in seen), seen
    ready = {kind: _probe(container, probe, server.url, port) for kind, probe in probes.items()}
    assert ready == dict.fromkeys(probes, "pass"), ready


class _Flood:
    """ModelInfer calls on `identity` from ``width`` concurrent callers (asyncio, in a thread) until
    stopped, each sending its next call when the last one ends; counts the status codes."""

    def __init__(self, url: str, width: int) -> None:
        self.url, self.width = url, width
        self.codes: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        tensor = np.ones((1, 16), np.float32)
        self._request = service_pb2.ModelInferRequest(
            model_name="identity",
            inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, 16])],
            raw_input_contents=[tensor.tobytes()],
        ).SerializeToString()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    def __enter__(self) -> _Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        # several connections, as several clients would open (one connection's streams are capped too)
        channels = [
            grpc.aio.insecure_channel(self.url, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)
        ]
        calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer") for ch in channels]

        async def caller(i: int) -> None:
            call = calls[i % len(calls)]
            while not self._stop.is_set():
                try:
                    await call(self._request, timeout=20)
                    self.codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    self.codes[exc.code().name] += 1

        await asyncio.gather(*(caller(i) for i in range(self.width)))
        for channel in channels:
            await channel.close()


def test_http_probes_pass_while_grpc_sheds_calls(repo: Path, start_server: Callable[..., Server]) -> None:
    """The reason the Deployment's probes are HTTP: a server flooded past --grpc-max-pending-calls has
    gRPC cancel new calls at random, grpc.health.v1 checks among them (a failed gRPC probe; about half
    of them here, which the report shows), while the manifest's HTTP probe paths keep answering 200
    within the probes' timeouts. A cap of 8 here stands for the default 1000 under thousands of calls."""
    docs = rendered("cpu")
    container = server_container("cpu", docs)
    probes = _probes(container)
    http_port = serve_settings(docs, container).http_port
    assert all(_port_number(container, probe["httpGet"]["port"]) == http_port for probe in probes.values()), probes
    server = start_server(repo, "--grpc-max-pending-calls", "8")
    port = server.http_port
    grpc_health: collections.Counter[str] = collections.Counter()
    http: dict[str, collections.Counter[str]] = {kind: collections.Counter() for kind in probes}
    slowest = 0.0
    with _Flood(server.url, 400) as flood:
        deadline = time.monotonic() + 15
        while flood.codes["CANCELLED"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flood.codes["CANCELLED"] > 0, f"gRPC never shed a call: {flood.codes}\n{server.log[-2000:]}"
        cancelled_before = flood.codes["CANCELLED"]
        end = time.monotonic() + 60  # until every probe has answered 5 times (about 3 s when idle)
        while time.monotonic() < end and min(sum(counts.values()) for counts in http.values()) < 5:
            for kind, probe in probes.items():
                started = time.monotonic()
                http[kind][_probe(container, probe, server.url, port)] += 1
                slowest = max(slowest, time.monotonic() - started)
            grpc_health[_health(server.url, "liveness", timeout=probes["liveness"]["timeoutSeconds"])] += 1
            time.sleep(0.1)
        cancelled_during = flood.codes["CANCELLED"] - cancelled_before
    report = f"HTTP probes {http}, slowest {slowest:.2f} s; gRPC health checks {dict(grpc_health)}"
    report += f"; calls {dict(flood.codes)}"
    assert cancelled_during > 0, f"gRPC stopped shedding while the probes ran: {report}"
    assert any(k.startswith("CANCELLED") for k in grpc_health), f"no gRPC health check was cancelled: {report}"
    assert all(set(counts) == {"pass"} and counts["pass"] >= 5 for counts in http.values()), report
    assert server.client.is_server_live()


def test_shutdown_against_a_real_server(repo: Path, start_server: Callable[..., Server], tmp_path: Path) -> None:
    """The cpu overlay's shutdown settings on a real server: on SIGTERM readiness fails at once while
    liveness holds, requests are still served during the drain delay, and the process exits before
    the pod's grace period would kill it."""
    docs = rendered("cpu")
    container = server_container("cpu", docs)
    env = config_env(docs, container)
    drain = float(env["TENSORGATE_DRAIN_DELAY_SECS"])
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    probes = _probes(container)
    # the overlay's environment; this machine's paths (the flags the test server gets win over the ports)
    env |= {"TENSORGATE_ENGINE_CACHE_DIR": str(tmp_path / "cache"), "TENSORGATE_MODEL_REPOSITORY": str(repo)}
    server = start_server(repo, env=env)
    port = server.http_port

    def probe(kind: str) -> str:
        return _probe(container, {**probes[kind], "timeoutSeconds": 1}, server.url, port)

    assert probe("readiness") == "pass" and probe("liveness") == "pass"
    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)
    answers = []  # the signal is handled asynchronously: within a second, not necessarily before the next call
    while time.monotonic() - signalled < 1.0 and "HTTP 400" not in answers:
        answers.append(probe("readiness"))
    assert answers[-1] == "HTTP 400", f"readiness after SIGTERM: {answers}"
    assert probe("liveness") == "pass"
    time.sleep(drain / 2)
    assert probe("liveness") == "pass"
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
    client = grpcclient.InferenceServerClient(server.url)
    try:  # a client that has not yet seen the pod leave its endpoints is still served
        client.infer("identity", [tensor])
    finally:
        client.close()
    code = server.proc.wait(grace)
    took = time.monotonic() - signalled
    assert code == 0, server.log
    assert drain - 0.5 <= took < grace, f"exited {took:.1f} s after SIGTERM (drain {drain} s, grace {grace} s)"


# ---- autoscaling: prometheus-adapter's rules against a real Prometheus ----


ADAPTER_RULE_KEYS = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}


def adapter_rules() -> list[Doc]:
    """The rules of autoscaling/adapter-rules.yaml, a fragment of prometheus-adapter's configuration file."""
    parsed = yaml.safe_load(ADAPTER_RULES.read_text())
    assert set(parsed) == {"rules"}
    rules: list[Doc] = parsed["rules"]
    for rule in rules:
        assert set(rule) <= ADAPTER_RULE_KEYS and {"seriesQuery", "metricsQuery", "name", "resources"} <= set(rule)
        assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
        assert set(rule["name"]) <= {"matches", "as"}
    return rules


def series_name(rule: Doc) -> str:
    match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'\""))
    assert match, rule["seriesQuery"]
    return match.group(0)


def rule_metric_name(rule: Doc) -> str:
    """The metric name the adapter serves for a rule: name.matches applied to the series, name.as its
    replacement (Go's $1 / ${1} as Python's \\1)."""
    series, matches = series_name(rule), rule["name"].get("matches", "")
    found = re.search(matches, series)
    assert found, f"{matches!r} does not match {series}"
    replacement = re.sub(r"\$\{?(\d+)\}?", r"\\\1", rule["name"].get("as", ""))
    return found.expand(replacement) if replacement else series


def metrics_query(rule: Doc, namespace: str, pods: list[str]) -> str:
    """The rule's metricsQuery as prometheus-adapter runs it for the pods metric of ``pods``: its
    <<.Series>>, <<.LabelMatchers>> and <<.GroupBy>> filled in (any other template action fails)."""
    pod_matcher = f'pod="{pods[0]}"' if len(pods) == 1 else f'pod=~"{"|".join(pods)}"'
    values = {
        ".Series": series_name(rule),
        ".LabelMatchers": f'namespace="{namespace}",{pod_matcher}',
        ".GroupBy": "pod",
    }

    def fill(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        assert key in values, f"template action <<{key}>> is not one the test fills"
        return values[key]

    return re.sub(r"<<(.*?)>>", fill, rule["metricsQuery"])


# kube-prometheus's prometheus-adapter configuration (its ConfigMap adapter-config, key config.yaml, as
# prometheus-operator/kube-prometheus manifests/prometheusAdapter-configMap.yaml renders it at commit
# 0591fefa27bb136877dc212d4fd85bf3b53d26ed: jsonnet's manifestYamlDoc, quoted keys, no final newline):
# the resource metrics behind `kubectl top` and CPU/memory HPAs, which tensorgate's rules must not replace.
KUBE_PROMETHEUS_ADAPTER_CONFIG = '''\
"resourceRules":
  "cpu":
    "containerLabel": "container"
    "containerQuery": |
      sum by (<<.GroupBy>>) (
        irate (
            container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!="",pod!=""}[120s]
        )
      )
    "nodeQuery": |
      sum by (<<.GroupBy>>) (
        1 - irate(
          node_cpu_seconds_total{mode="idle"}[60s]
        )
        * on(namespace, pod) group_left(node) (
          node_namespace_pod:kube_pod_info:{<<.LabelMatchers>>}
        )
      )
      or sum by (<<.GroupBy>>) (
        1 - irate(
          windows_cpu_time_total{mode="idle", job="windows-exporter",<<.LabelMatchers>>}[4m]
        )
      )
    "resources":
      "overrides":
        "namespace":
          "resource": "namespace"
        "node":
          "resource": "node"
        "pod":
          "resource": "pod"
  "memory":
    "containerLabel": "container"
    "containerQuery": |
      sum by (<<.GroupBy>>) (
        container_memory_working_set_bytes{<<.LabelMatchers>>,container!="",pod!=""}
      )
    "nodeQuery": |
      sum by (<<.GroupBy>>) (
        node_memory_MemTotal_bytes{job="node-exporter",<<.LabelMatchers>>}
        -
        node_memory_MemAvailable_bytes{job="node-exporter",<<.LabelMatchers>>}
      )
      or sum by (<<.GroupBy>>) (
        windows_cs_physical_memory_bytes{job="windows-exporter",<<.LabelMatchers>>}
        -
        windows_memory_available_bytes{job="windows-exporter",<<.LabelMatchers>>}
      )
    "resources":
      "overrides":
        "instance":
          "resource": "node"
        "namespace":
          "resource": "namespace"
        "pod":
          "resource": "pod"
  "window": "5m"'''


def test_adapter_rules_merge_into_kube_prometheus_config() -> None:
    """deploy/kubernetes/README.md's merge, as its shell does it (no `rules:` key yet, so append a newline
    and the fragment to the ConfigMap's config.yaml): the result keeps kube-prometheus's resourceRules as
    they were and adds tensorgate's rules as they are."""
    readme = (DEPLOY / "kubernetes" / "README.md").read_text()
    assert (
        "grep -Eq '^\"?rules\"?:'" in readme and "cat deploy/kubernetes/autoscaling/adapter-rules.yaml; } >>" in readme
    )
    assert not re.search(r'^"?rules"?:', KUBE_PROMETHEUS_ADAPTER_CONFIG, re.MULTILINE)  # the README's check
    merged = yaml.safe_load(KUBE_PROMETHEUS_ADAPTER_CONFIG + "\n" + ADAPTER_RULES.read_text())
    before = yaml.safe_load(KUBE_PROMETHEUS_ADAPTER_CONFIG)
    assert merged["resourceRules"] == before["resourceRules"]
    assert merged["rules"] == adapter_rules()
    assert set(merged) == {"resourceRules", "rules"}


def test_autoscaling_registers_the_custom_metrics_api_and_replaces_nothing() -> None:
    """The autoscaling folder holds only the APIService for custom.metrics.k8s.io (kube-prometheus
    registers only metrics.k8s.io), pointing at kube-prometheus's adapter Service; no ConfigMap, which
    would replace the adapter's whole configuration; and the docs create it, never apply it."""
    docs = rendered("autoscaling")
    assert [d["kind"] for d in docs] == ["APIService"], [name_of(d) for d in docs]
    (service,) = docs
    assert service["metadata"]["name"] == "v1beta1.custom.metrics.k8s.io"
    spec = service["spec"]
    assert (spec["group"], spec["version"]) == ("custom.metrics.k8s.io", "v1beta1")
    assert spec["service"] == {"name": "prometheus-adapter", "namespace": "monitoring", "port": 443}
    served = {rule_metric_name(r) for r in adapter_rules()}
    for tree in OVERLAYS:
        for metric in the(rendered(tree), "HorizontalPodAutoscaler")["spec"]["metrics"]:
            assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served  # custom.metrics.k8s.io
    for doc in (ROOT / "README.md", DEPLOY / "kubernetes" / "README.md"):
        text = doc.read_text()
        assert "kubectl apply -k deploy/kubernetes/autoscaling" not in text, doc
        assert "kubectl create -k deploy/kubernetes/autoscaling" in text, doc


@contextlib.contextmanager
def scraping_as_a_pod(work: Path, metrics_port: int, labels: Mapping[str, str]) -> Iterator[str]:
    """Prometheus scraping 127.0.0.1:``metrics_port`` every second with the target labels the
    Prometheus Operator gives a ServiceMonitor's targets (``labels``: namespace, pod, ...)."""
    with running_prometheus(work, metrics_port, labels=labels, job=labels["service"]) as url:
        yield url


def _eventually(url: str, expr: str, accept: Callable[[list[Doc]], bool], timeout: float = 45.0) -> list[Doc]:
    deadline = time.monotonic() + timeout
    result: list[Doc] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            result = query(url, expr)
            if accept(result):
                return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never gave an accepted answer to {expr}: last {result}")


def _traffic(server: Server, seconds: float) -> int:
    """Requests from four threads for ``seconds``: a little load on both identity models."""
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
    done: list[int] = []
    end = time.monotonic() + seconds

    def client_loop() -> None:
        client = grpcclient.InferenceServerClient(server.url)
        n = 0
        try:
            while time.monotonic() < end and n < 2000:
                client.infer("batched" if n % 2 else "identity", [tensor])
                n += 1
        finally:
            client.close()
            done.append(n)

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return sum(done)


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (scripts/install_prometheus.sh installs Debian's)")
def test_adapter_rules_return_values_for_the_pod(server: Server, tmp_path: Path) -> None:
    rules = adapter_rules()
    assert {rule_metric_name(r) for r in rules} >= {"avg_time_queue_us", "tensorgate_event_loop_utilization"}
    namespace, pod = "tensorgate", "tensorgate-7d4b9c-x2x9q"
    labels = {
        "namespace": namespace,
        "pod": pod,
        "service": "tensorgate",
        "container": "tensorgate",
        "endpoint": "metrics",
    }
    with scraping_as_a_pod(tmp_path, server.metrics_port, labels) as prometheus:
        _eventually(prometheus, "up == 1", bool)
        assert _traffic(server, 4.0) > 0
        for rule in rules:
            # the adapter discovers series with seriesQuery: they must be there, with namespace and pod
            series = _eventually(prometheus, rule["seriesQuery"].strip("'\""), bool)
            assert all((s["metric"]["namespace"], s["metric"]["pod"]) == (namespace, pod) for s in series)
            expr = metrics_query(rule, namespace, [pod])

            def positive(result: list[Doc]) -> bool:
                values = [float(r["value"][1]) for r in result]
                return (
                    len(result) == 1
                    and result[0]["metric"] == {"pod": pod}
                    and all(v > 0 and math.isfinite(v) for v in values)
                )

            _eventually(prometheus, expr, positive)
