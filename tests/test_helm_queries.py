"""The Helm chart's queries file: a ConfigMap the exporter accepts, mounted as a directory (a
``subPath`` mount would never see an update), passed as TW_EXPORTER_QUERIES_FILE, and a change
of the inline file rolls the pod through a checksum annotation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from exporter.config.queries_file import parse
from exporter.config.settings import query_params
from tests.helm_support import MINIMAL_VALUES, RELEASE, Manifest, manifests, one, render
from tests.helpers import unavailable

try:
    import helm_python  # noqa: F401
except ImportError:
    unavailable("helm-python-sdk is not installed (pip install -e '.[test]')")

REPO = Path(__file__).resolve().parent.parent
FULLNAME = f"{RELEASE}-tw-exporter"
QUERIES = yaml.safe_load((REPO / "examples" / "queries" / "activity.yml").read_text())


def rendering(queries: dict[str, Any]) -> list[Manifest]:
    return manifests(render({**MINIMAL_VALUES, "queries": queries}))


def pod(found: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(found, "Deployment").doc["spec"]["template"]
    return spec


def test_inline_queries_become_a_mounted_file_the_exporter_accepts() -> None:
    found = rendering({"config": QUERIES})
    configmap = one(found, "ConfigMap")
    assert configmap.name == f"{FULLNAME}-queries"
    text = configmap.doc["data"]["queries.yml"]
    config = parse(text, query_params())
    assert "daily_active_users" in config.custom
    template = pod(found)
    (container,) = template["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    path = Path(env["TW_EXPORTER_QUERIES_FILE"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "queries")
    assert mount["mountPath"] == str(path.parent)
    assert "subPath" not in mount
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "queries")
    assert volume["configMap"]["name"] == f"{FULLNAME}-queries"
    assert path.name == "queries.yml"
    for manifest in found:
        if manifest.kind in ("Deployment", "ConfigMap"):
            kubernetes_validate.validate(
                manifest.doc, kubernetes_validate.utils.latest_version(), strict=True
            )


def test_a_change_of_the_inline_file_rolls_the_pod() -> None:
    first = pod(rendering({"config": QUERIES}))["metadata"]["annotations"]["checksum/queries"]
    changed = yaml.safe_load(yaml.safe_dump(QUERIES))
    changed["queries"]["daily_active_users"]["interval"] = "10m"
    second = pod(rendering({"config": changed}))["metadata"]["annotations"]["checksum/queries"]
    assert first != second
    same = pod(rendering({"config": QUERIES}))["metadata"]["annotations"]["checksum/queries"]
    assert same == first


def test_an_existing_configmap_is_mounted_by_key_and_none_is_rendered() -> None:
    found = rendering({"existingConfigMap": {"name": "platform-queries", "key": "q.yaml"}})
    assert not [m for m in found if m.kind == "ConfigMap" and m.name.endswith("-queries")]
    template = pod(found)
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "queries")
    assert volume["configMap"] == {
        "name": "platform-queries",
        "items": [{"key": "q.yaml", "path": "queries.yml"}],
    }
    assert "checksum/queries" not in (template["metadata"].get("annotations") or {})


def test_no_queries_file_by_default() -> None:
    found = manifests(render(MINIMAL_VALUES))
    (container,) = pod(found)["spec"]["containers"]
    assert "TW_EXPORTER_QUERIES_FILE" not in {e["name"] for e in container["env"]}
    assert not [v for v in pod(found)["spec"]["volumes"] if v["name"] == "queries"]
