"""What can be checked here of the scale-out deployment (Docker and Kubernetes are not available on this machine):
every Envoy variant passes `envoy --mode validate`, the Kubernetes manifests parse and say what the README says, the
committed Envoy ConfigMap is what the renderer makes, and the Dockerfile only refers to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.envoy import (
    CONFIG,
    HOLD_RESPONSE,
    ROOT,
    GatewayPorts,
    _route_for,
    render,
    request_paths,
    validate,
    write_rendered,
)
from service.policy import CONTRACT_MODULES, contract_policies, file_protos

K8S = ROOT / "deploy" / "k8s"


def _routes(config: dict) -> list[dict]:
    """The routes that forward (not those that answer directly, like the upload size cap's 413)."""
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [route for route in manager["route_config"]["virtual_hosts"][0]["routes"] if "route" in route]


@pytest.mark.parametrize(
    "upstreams, dns",
    [((), False), ((("127.0.0.1", 50061), ("127.0.0.1", 50062)), False), ((("embeddings-grpc", 50051),), True)],
    ids=["single", "static-replicas", "strict-dns"],
)
def test_every_envoy_variant_validates(tmp_path: Path, upstreams, dns) -> None:
    config = write_rendered(GatewayPorts(18080, 50051, 0), tmp_path / "envoy.yaml", upstreams=upstreams, dns=dns)
    checked = validate(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Deprecated" not in checked.stdout + checked.stderr


def test_the_single_upstream_default_is_unchanged() -> None:
    config = render(GatewayPorts())
    shipped = yaml.safe_load(CONFIG.read_text())
    assert config["static_resources"]["clusters"] == shipped["static_resources"]["clusters"]
    assert all("retry_policy" not in route["route"] for route in _routes(config))


def test_replicas_get_balancing_health_checks_and_retries_only_where_safe() -> None:
    config = render(GatewayPorts(), upstreams=[("127.0.0.1", 50061), ("127.0.0.1", 50062)])
    cluster = config["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "LEAST_REQUEST" and cluster["health_checks"][0]["grpc_health_check"] == {}
    assert "outlier_detection" in cluster and "retry_budget" in cluster["circuit_breakers"]["thresholds"][0]
    hosts = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [h["endpoint"]["address"]["socket_address"]["port_value"] for h in hosts] == [50061, 50062]
    policies = {
        route["match"].get("path") or route["match"].get("prefix"): route["route"]["retry_policy"]["retry_on"]
        for route in _routes(config)
    }
    assert (
        "reset" in policies["/embeddings.v1.RestService/"] and "unavailable" in policies["/embeddings.v1.RestService/"]
    )
    assert "reset" in policies["/embeddings.v1.EmbeddingService/"]
    # Not idempotent: retried only when the call never reached a replica.
    assert policies["/"] == "connect-failure,refused-stream"
    assert policies["/v1/async/embeddings"] == "connect-failure,refused-stream"
    # The Batch API: uploads are not replayed; reads and cancelling are.
    assert policies["/embeddings.v1.FileService/CreateFile"] == "connect-failure,refused-stream"
    assert "reset" in policies["/embeddings.v1.BatchService/RetrieveBatch"]
    assert "reset" in policies["/embeddings.v1.FileService/ListFiles"]


def test_the_responses_of_calls_retried_on_reset_are_held_until_complete() -> None:
    """Envoy retries only until it has a response's headers, which the server sends ahead of the message: the
    routes retried on reset hold their responses on the cluster (gateway/hold_response.lua) until complete, so a
    replica dying in between is retried. No other route is held, and none of them answers with a stream (held
    whole, a stream would not stream)."""
    config = render(GatewayPorts(), upstreams=[("127.0.0.1", 50061), ("127.0.0.1", 50062)])
    protocol = config["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
    [filters] = [options["http_filters"] for options in protocol.values()]
    assert [f["name"] for f in filters] == [HOLD_RESPONSE, "envoy.filters.http.upstream_codec"]
    assert Path(filters[0]["typed_config"]["default_source_code"]["filename"]).is_file()
    held = {
        id(route)
        for route in _routes(config)
        if route.get("metadata", {}).get("filter_metadata", {}).get(HOLD_RESPONSE)
    }
    on_reset = {id(route) for route in _routes(config) if "reset" in route["route"]["retry_policy"]["retry_on"]}
    assert held == on_reset and held
    streamed = {
        f"/{proto.package}.{service.name}/{method.name}"
        for proto in file_protos(CONTRACT_MODULES)
        for service in proto.service
        for method in service.method
        if method.server_streaming
    }
    assert streamed  # file downloads
    for grpc_path, paths in request_paths(file_protos(CONTRACT_MODULES)).items():
        for path in paths:
            route = _route_for(_routes(config), path)
            if id(route) in held:
                assert grpc_path not in streamed, f"{path} streams its answer, but its route holds it"
                assert contract_policies()[grpc_path].retry_safe, path


def _manifests() -> dict[str, dict]:
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and "kind" in document:
                documents[f"{document['kind']}/{document['metadata']['name']}"] = document
    return documents


def test_kubernetes_manifests_parse_and_wire_up() -> None:
    documents = _manifests()
    expected = {
        "ConfigMap/embeddings-config",
        "ConfigMap/embeddings-envoy",
        "Secret/embeddings-stores",
        "Deployment/embeddings",
        "Deployment/embeddings-envoy",
        "Service/embeddings-grpc",
        "Service/embeddings",
        "HorizontalPodAutoscaler/embeddings",
        "Job/embeddings-bootstrap",
    }
    assert expected <= set(documents)
    server = documents["Deployment/embeddings"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": 50051}
    assert {"embeddings-config", "embeddings-stores"} == {
        (source.get("configMapRef") or source.get("secretRef"))["name"] for source in server["envFrom"]
    }
    assert documents["Service/embeddings-grpc"]["spec"]["clusterIP"] == "None"  # headless: DNS lists every pod
    assert set(documents["Secret/embeddings-stores"]["stringData"]) == {"EMBED_STORE_URL", "EMBED_REDIS_URL"}
    assert documents["HorizontalPodAutoscaler/embeddings"]["spec"]["scaleTargetRef"]["name"] == "embeddings"
    kustomized = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / name).is_file() for name in kustomized)
    from service.config import Settings

    for key in documents["ConfigMap/embeddings-config"]["data"]:
        assert key.removeprefix("EMBED_").lower() in Settings.__dataclass_fields__, key


def test_the_envoy_configmap_is_the_rendered_config_and_validates(tmp_path: Path) -> None:
    from tools.k8s_envoy import IMAGE_ROOT, configmap

    committed = (K8S / "envoy-config.yaml").read_text()
    assert committed == configmap(), "deploy/k8s/envoy-config.yaml is stale: python -m tools.k8s_envoy > it"
    envoy_yaml = yaml.safe_load(committed)["data"]["envoy.yaml"]
    assert "STRICT_DNS" in envoy_yaml and "embeddings-grpc" in envoy_yaml
    local = tmp_path / "envoy.yaml"
    local.write_text(envoy_yaml.replace(IMAGE_ROOT, str(ROOT)))  # the image's paths, here
    checked = validate(local)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dockerfile_refers_to_files_that_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") == 2 and "AS build" in text and "AS runtime" in text
    assert "USER 10001" in text and "EMBED_HOST=0.0.0.0" in text
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    for module in re.findall(r"python -m ([\w.]+)", text):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file() or (ROOT / module.replace(".", "/")).is_dir()
