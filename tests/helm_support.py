"""Shared helpers for the packaging tests: render the Helm chart offline, parse what it renders,
and find the external tools (hadolint, promtool) the tests need.

Rendering goes through ``helm_python`` (Helm's own Go engine via its C ABI), so values are
validated against ``values.schema.json`` exactly as ``helm install/template`` would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART_DIR = REPO / "helm" / "tw-exporter"
RELEASE = "tw"
NAMESPACE = "monitoring"

# Distinctive enough that finding it anywhere but the Secret is a leak, not a coincidence.
DSN_PASSWORD = "Pa55-leak-canary-7f3c9e"
DSN = f"postgresql://tw_exporter:{DSN_PASSWORD}@db.example.internal:5432/app?sslmode=require"

# The least a user must give: a database.
MINIMAL_VALUES: dict[str, Any] = {"database": {"dsn": DSN}}

# High availability with the monitoring objects, so the HA pods' scrape path is checked too.
HA_VALUES: dict[str, Any] = {
    "database": {"dsn": DSN},
    "ha": {"enabled": True, "group": "prod-db", "lease": 20},
    "serviceMonitor": {"enabled": True},
}

# Every optional feature switched on.
ALL_FEATURES_VALUES: dict[str, Any] = {
    "database": {"dsn": DSN},
    "image": {"digest": "sha256:" + "ab" * 32},
    "config": {
        "interval": 60,
        "queryTimeout": 20,
        "topUsers": 25,
        "trendingDays": 3,
        "trendingLimit": 15,
        "statsDays": 14,
        "maxStaleness": 300,
        "logLevel": "debug",
        "logFormat": "text",
    },
    "webConfig": {
        "enabled": True,
        "tlsSecret": "tw-exporter-tls",
        "config": {
            "tls_server_config": {
                "cert_file": "/etc/tw-exporter/tls/tls.crt",
                "key_file": "/etc/tw-exporter/tls/tls.key",
            },
            "basic_auth_users": {
                "prometheus": "$2b$12$hNf2lSsxfm0.i4a.1kVpSOVyBCfIB51VRjgBUyv6kdnyTlgWj81Ay"
            },
        },
    },
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "interval": "1m",
        "scrapeTimeout": "15s",
        "tlsConfig": {"insecureSkipVerify": True},
        "basicAuth": {
            "username": {"name": "tw-scrape-auth", "key": "username"},
            "password": {"name": "tw-scrape-auth", "key": "password"},
        },
        "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "prod"}],
        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}],
        "targetLabels": ["app.kubernetes.io/instance"],
    },
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "additionalGroups": [
            {"name": "tw-exporter.extra", "rules": [{"record": "tw:up:sum", "expr": "sum(tw_up)"}]}
        ],
    },
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}},
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"team": "platform"},
    "commonLabels": {"cost-center": "observability"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "mon", "effect": "NoSchedule"}
    ],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [
                            {"key": "node-role", "operator": "In", "values": ["monitoring"]}
                        ]
                    },
                }
            ]
        }
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "tw-exporter"}},
        }
    ],
    "priorityClassName": "monitoring",
    "imagePullSecrets": [{"name": "regcred"}],
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "extraEnvFrom": [{"configMapRef": {"name": "tw-extra-env"}}],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
    "serviceAccount": {"annotations": {"example.com/role": "tw-exporter"}},
    "service": {"annotations": {"example.com/scrape": "false"}, "labels": {"tier": "mon"}},
    "tests": {"basicAuthSecret": {"name": "tw-scrape-auth"}},
}


@dataclass(frozen=True)
class Manifest:
    template: str  # e.g. "templates/deployment.yaml"
    doc: dict[str, Any]
    text: str  # the template's whole rendered text

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])


def render(
    values: Mapping[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """``helm template`` offline: template path (relative to the chart) -> rendered text."""
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(dict(values or {}), name=name, namespace=namespace)
    prefix = f"{CHART_DIR.name}/"
    return {path.removeprefix(prefix): text for path, text in rendered.items()}


def manifests(rendered: Mapping[str, str]) -> list[Manifest]:
    """Every Kubernetes object in a rendering (NOTES.txt and empty templates skipped)."""
    found: list[Manifest] = []
    for template, text in sorted(rendered.items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                found.append(Manifest(template, doc, text))
    return found


def template_output(rendered: Mapping[str, str]) -> str:
    """What ``helm template`` prints: every non-empty manifest, ``---`` separated."""
    parts = [
        f"---\n# Source: {CHART_DIR.name}/{template}\n{text.strip()}\n"
        for template, text in sorted(rendered.items())
        if template.endswith((".yaml", ".yml")) and text.strip()
    ]
    return "".join(parts)


def one(found: list[Manifest], kind: str) -> Manifest:
    matches = [m for m in found if m.kind == kind]
    assert len(matches) == 1, f"expected one {kind}, got {[m.name for m in matches]}"
    return matches[0]


def leaves(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of a values tree down to scalars, lists and empty maps."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


# ------------------------------------------------------------------ external tools


# ------------------------------------------------------------------ monitoring CRD shapes
# A structural subset of the prometheus-operator CRDs (monitoring.coreos.com/v1), limited to
# the fields this chart renders, strict about unknown keys so a typo cannot slip through.

DURATION = {
    "type": "string",
    "pattern": (
        r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
        r"(([0-9]+)ms)?)$"
    ),
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SECRET_KEY_SELECTOR = {
    "type": "object",
    "required": ["key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}, "optional": {}},
    "additionalProperties": False,
}
RELABEL_CONFIG = {
    "type": "object",
    "properties": {
        "action": {
            "enum": [
                "replace",
                "Replace",
                "keep",
                "Keep",
                "drop",
                "Drop",
                "hashmod",
                "HashMod",
                "labelmap",
                "LabelMap",
                "labeldrop",
                "LabelDrop",
                "labelkeep",
                "LabelKeep",
                "lowercase",
                "Lowercase",
                "uppercase",
                "Uppercase",
                "keepequal",
                "KeepEqual",
                "dropequal",
                "DropEqual",
            ]
        },
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
    },
    "additionalProperties": False,
}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                    "additionalProperties": False,
                },
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": STRING_MAP,
                        "matchExpressions": {"type": "array", "items": {"type": "object"}},
                    },
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "tlsConfig": {"type": "object"},
                            "basicAuth": {
                                "type": "object",
                                "properties": {
                                    "username": SECRET_KEY_SELECTOR,
                                    "password": SECRET_KEY_SELECTOR,
                                },
                                "additionalProperties": False,
                            },
                            "relabelings": {"type": "array", "items": RELABEL_CONFIG},
                            "metricRelabelings": {"type": "array", "items": RELABEL_CONFIG},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "limit": {"type": "integer"},
                            "query_offset": DURATION,
                            "labels": STRING_MAP,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string", "minLength": 1},
                                        "record": {"type": "string", "minLength": 1},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": SERVICE_MONITOR_SCHEMA,
    "PrometheusRule": PROMETHEUS_RULE_SCHEMA,
}
