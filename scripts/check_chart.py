#!/usr/bin/env python3
"""Offline checks of the Helm chart helm/relay. Run it through
scripts/check-chart.sh, which provides the virtual environment.

No helm binary and no cluster: the Helm v4 Go SDK (helm-python-sdk) lints,
renders like `helm template` and validates values against
values.schema.json; kubernetes-validate (strict) checks every rendered
manifest against the Kubernetes OpenAPI schemas; yamllint checks the chart's
YAML files and the rendered output.

For each value set in CASES it:
  1. validates the values against values.schema.json;
  2. lints the chart strictly with them (warnings fail);
  3. renders it, yamllints the output and validates every manifest with
     kubernetes-validate --strict for each Kubernetes version in
     KUBE_VERSIONS (the CRD kinds ServiceMonitor, PrometheusRule and
     HTTPRoute, which it has no schema for, get the structural schemas in
     CRD_SCHEMAS below instead);
  4. asserts what matters (see the check_* functions):
     - every resource has the chart's labels and the release namespace;
     - liveness GET /healthz and readiness GET /readyz on the http port;
     - pod securityContext runAsNonRoot + seccomp RuntimeDefault, container
       readOnlyRootFilesystem, no privilege escalation, capabilities drop
       ALL, no emptyDir or other writable volume;
     - preStop: the native sleep action by default, exec `sleep` when asked;
       terminationGracePeriodSeconds = preStop + RELAY_SHUTDOWN_GRACE_S +
       margin, and at least preStop + grace + 1;
     - redis.tls: one read-only projected volume redis-tls at
       /etc/relay/redis-tls with exactly the CA and client Secrets' items
       (ca.crt, client.crt, client.key), and RELAY_REDIS_CA_FILE,
       RELAY_REDIS_CLIENT_CERT, RELAY_REDIS_CLIENT_KEY naming those files;
       none of them without redis.tls;
     - env: every RELAY_* setting present with its value, secrets
       (RELAY_JWT_SECRET, RELAY_API_KEY, REDIS_URL) only through secretKeyRef
       to the chart Secret or the existingSecret, never a literal value;
       RELAY_NODE_ID from metadata.name; RELAY_WORKER_THREADS from the CPU
       request unless relay.workerThreads is set; RELAY_LOG_FORMAT=json;
     - checksum annotations change when a setting or a secret changes;
     - replicas 3 by default, none when the HPA owns them;
     - HPA (autoscaling/v2) on CPU, and on relay_connected_sockets per pod
       when enabled; PDB present when enabled;
     - Ingress: ingress-nginx cookie affinity and websocket timeouts while
       long-polling is on, no sticky-session settings with websocketOnly;
       HTTPRoute sessionPersistence likewise;
     - ServiceMonitor scrapes /metrics on the http port;
     - PrometheusRule carries exactly the groups of files/alerts.yml (and
       files/alerts.yml equals prometheus/alerts.yml once that exists);
     - NOTES.txt renders;
and for each case in BAD_CASES that rendering fails with the expected
message (schema violations and cross-value checks).

Also: Chart.yaml appVersion equals Cargo.toml's version; every leaf of
values.yaml has a comment; the Dockerfile (parsed with the official
BuildKit parser; no Docker engine here) builds with the Rust version of
Cargo.toml and `cargo build --release --locked -p relay`, copies target/release/relay
into gcr.io/distroless/cc-debian12:nonroot, runs as nonroot with ENTRYPOINT
["/relay"] CMD ["serve"] and exposes the chart's port; .dockerignore keeps
target/ and .git out and the sources in.

Exit status 0 when everything passed, 1 otherwise (each failure printed).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import dockerfile
import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from yamllint import linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parent.parent
# RELAY_CHART_DIR points the checks at another copy of the chart (used to
# check the checker itself on deliberately broken copies).
CHART = Path(os.environ.get("RELAY_CHART_DIR", ROOT / "helm" / "relay")).resolve()
RELEASE = "relay"
NAMESPACE = "realtime"
# The oldest Kubernetes the chart supports (native preStop sleep) and the
# newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]

# yamllint: the chart's own YAML files are held to the default rules (plus a
# line length); rendered output, like any `helm template` output, nests
# toYaml sequences both ways, so sequence indentation is not checked there.
YAMLLINT_SOURCE = YamlLintConfig(
    "extends: default\n"
    "rules:\n"
    "  line-length: {max: 120}\n"
    "  document-start: disable\n"
)
YAMLLINT_RENDERED = YamlLintConfig(
    "extends: default\n"
    "rules:\n"
    "  line-length: {max: 160}\n"
    "  indentation: {spaces: 2, indent-sequences: whatever}\n"
    "  document-start: {present: true}\n"
)

FAILURES: list[str] = []


def fail(msg: str) -> None:
    FAILURES.append(msg)
    print(f"  FAIL {msg}")


def check(cond: bool, msg: str) -> bool:
    if not cond:
        fail(msg)
    return cond


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------- value sets

PEM = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----
"""

BASE = {
    "redis": {"url": "redis://:s3cret@redis-master.redis:6379/0"},
    "auth": {"jwt": {"secret": "jwt-test-secret"}},
}

FULL = {
    "commonLabels": {"team": "realtime"},
    "image": {"repository": "registry.example.com/platform/relay", "tag": "0.1.0"},
    "redis": {"url": "", "existingSecret": "relay-redis", "existingSecretKey": "url"},
    "auth": {
        "existingSecret": "relay-auth",
        "existingSecretKeys": {"jwtSecret": "jwt", "apiKey": "publish-key"},
        "jwt": {"issuer": "https://auth.example.com", "audience": "relay"},
    },
    "relay": {
        "websocketOnly": False,
        "keyPrefix": "prod:relay:",
        "logLevel": "info,relay=debug",
        "corsOrigins": ["https://app.example.com", "http://localhost:5173"],
        "maxConnections": 30000,
        "workerThreads": 2,
    },
    "podAnnotations": {"example.com/owner": "realtime"},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        "hosts": [{"host": "relay.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "relay-tls", "hosts": ["relay.example.com"]}],
        "nginx": {"enabled": True},
        "stickySessionAnnotations": {"example.com/sticky": "true"},
    },
    "httpRoute": {
        "enabled": True,
        "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
        "hostnames": ["relay.example.com"],
        "timeouts": {"request": "0s"},
        "sessionPersistence": {"enabled": True},
    },
    "autoscaling": {
        "enabled": True,
        "minReplicas": 3,
        "maxReplicas": 20,
        "connectedSockets": {"enabled": True, "averageValue": "8000"},
    },
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
    "priorityClassName": "realtime",
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "realtime", "effect": "NoSchedule"}],
}

# Redis over TLS with an ACL user: URL in the chart Secret, CA and client
# certificate (mutual TLS) from existing Secrets, non-default keys.
REDIS_TLS = deep_merge(BASE, {
    "redis": {
        "url": "rediss://relay:s3cret@redis.example.com:6380/0",
        "tls": {"caSecret": "redis-ca", "caKey": "ca.pem",
                "clientSecret": "relay-redis-client", "clientCertKey": "cert.pem", "clientKeyKey": "key.pem"},
    },
})

CASES: dict[str, dict[str, Any]] = {
    # Defaults plus the two values every cluster install needs.
    "defaults": BASE,
    # Every optional feature on, secrets from existing Secrets, polling on.
    "full": FULL,
    # The same with websocket-only: no sticky-session settings anywhere.
    "full-websocket-only": deep_merge(FULL, {"relay": {"websocketOnly": True}}),
    # Public-key JWT inline (chart ConfigMap), API key in the chart Secret,
    # exec preStop, embedded single node, no PDB, ClientIP affinity.
    "public-key-embedded": {
        "replicaCount": 1,
        "auth": {"apiKey": "publish-test-key", "jwt": {"mode": "publicKey", "publicKey": PEM}},
        "shutdown": {"graceSeconds": 30, "marginSeconds": 10, "preStop": {"mode": "exec", "seconds": 8}},
        "podDisruptionBudget": {"enabled": False},
        "service": {"sessionAffinity": "ClientIP"},
    },
    # Public key from an existing Secret, no preStop, minAvailable PDB.
    "public-key-secret": deep_merge(BASE, {
        "auth": {"jwt": {"mode": "publicKey", "secret": "",
                         "existingPublicKeySecret": "jwt-keys", "publicKeyItem": "es256.pem"}},
        "shutdown": {"preStop": {"mode": "none"}},
        "podDisruptionBudget": {"minAvailable": "50%"},
        "image": {"digest": "sha256:" + "a" * 64},
    }),
    # rediss:// with a CA and a client certificate (mutual TLS).
    "redis-tls": REDIS_TLS,
    # A Redis Cluster: seeds (TLS, ACL user) as REDIS_CLUSTER_URLS, with a CA
    # and a client certificate.
    "redis-cluster-tls": deep_merge(REDIS_TLS, {
        "redis": {"mode": "cluster",
                  "url": "rediss://relay:s3cret@redis-0.example.com:6380,rediss://relay:s3cret@redis-1.example.com:6380"},
    }),
    # A managed cluster's configuration endpoint, from an existing Secret.
    "redis-cluster-existing-secret": deep_merge(FULL, {"redis": {"mode": "cluster"}}),
    # A managed Redis: URL in an existing Secret, CA only, default key,
    # next to a public-key JWT volume.
    "redis-tls-ca-existing-secret": deep_merge(FULL, {
        "redis": {"tls": {"caSecret": "redis-ca"}},
        "auth": {"jwt": {"mode": "publicKey", "existingPublicKeySecret": "jwt-keys"}},
    }),
}

# name -> (values, substring the error must contain)
BAD_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "schema: unknown top-level key": (deep_merge(BASE, {"replicas": 3}), "additional properties"),
    "schema: misspelt relay setting": (deep_merge(BASE, {"relay": {"websocketonly": True}}), "additional properties"),
    "schema: replicaCount 0": (deep_merge(BASE, {"replicaCount": 0}), "/replicaCount"),
    "schema: replicaCount string": (deep_merge(BASE, {"replicaCount": "3"}), "/replicaCount"),
    "schema: bad preStop mode": (deep_merge(BASE, {"shutdown": {"preStop": {"mode": "httpGet"}}}), "/shutdown/preStop/mode"),
    "schema: bad log format": (deep_merge(BASE, {"relay": {"logFormat": "xml"}}), "/relay/logFormat"),
    "schema: too many worker threads": (deep_merge(BASE, {"relay": {"workerThreads": 4096}}), "/relay/workerThreads"),
    "schema: CORS origin without scheme": (
        deep_merge(BASE, {"relay": {"corsOrigins": ["app.example.com"]}}),
        "/relay/corsOrigins",
    ),
    "schema: non-redis url": (deep_merge(BASE, {"redis": {"url": "http://redis:6379"}}), "/redis/url"),
    "schema: unknown redis.mode": (deep_merge(BASE, {"redis": {"mode": "sentinel"}}), "/redis/mode"),
    "several urls without mode=cluster": (
        deep_merge(BASE, {"redis": {"url": "redis://a:6379,redis://b:6379"}}), "redis.mode=cluster"),
    "cluster seeds mixing redis:// and rediss://": (
        deep_merge(BASE, {"redis": {"mode": "cluster", "url": "redis://a:6379,rediss://b:6380"}}), "mixes"),
    "schema: ws message below 1 KiB": (deep_merge(BASE, {"relay": {"wsMaxMessageBytes": 512}}), "/relay/wsMaxMessageBytes"),
    "schema: ingress.enabled not a boolean": (deep_merge(BASE, {"ingress": {"enabled": "yes"}}), "/ingress/enabled"),
    "schema: bad route timeout": (deep_merge(BASE, {"httpRoute": {"timeouts": {"request": "1 hour"}}}), "/httpRoute/timeouts/request"),
    "schema: bad jwt mode": (deep_merge(BASE, {"auth": {"jwt": {"mode": "hs512"}}}), "/auth/jwt/mode"),
    "no JWT key at all": ({"redis": BASE["redis"]}, "set auth.jwt.secret or auth.existingSecret"),
    "3 replicas without Redis": ({"auth": BASE["auth"]}, "more than one pod needs a shared Redis"),
    "HPA without Redis": ({"auth": BASE["auth"], "replicaCount": 1, "autoscaling": {"enabled": True}},
                          "more than one pod needs a shared Redis"),
    "both redis url and existingSecret": (deep_merge(BASE, {"redis": {"existingSecret": "r"}}), "not both"),
    "publicKey mode without a key": (deep_merge(BASE, {"auth": {"jwt": {"mode": "publicKey", "secret": ""}}}),
                                     "needs exactly one of"),
    "public key with mode secret": (deep_merge(BASE, {"auth": {"jwt": {"publicKey": PEM}}}), "need auth.jwt.mode=publicKey"),
    "frame larger than message": (deep_merge(BASE, {"relay": {"wsMaxFrameBytes": 131072}}), "wsMaxFrameBytes"),
    "httpRoute without parentRefs": (deep_merge(BASE, {"httpRoute": {"enabled": True}}), "httpRoute.parentRefs"),
    "schema: empty redis.tls.clientSecret": (deep_merge(REDIS_TLS, {"redis": {"tls": {"clientSecret": ""}}}),
                                             "/redis/tls/clientSecret"),
    "schema: empty redis.tls.caSecret": (deep_merge(REDIS_TLS, {"redis": {"tls": {"caSecret": ""}}}), "/redis/tls/caSecret"),
    "schema: empty client key item": (deep_merge(REDIS_TLS, {"redis": {"tls": {"clientKeyKey": ""}}}),
                                      "/redis/tls/clientKeyKey"),
    "schema: client secret without its key item": (deep_merge(REDIS_TLS, {"redis": {"tls": {"clientKeyKey": None}}}),
                                                   "'clientKeyKey' required"),
    "schema: misspelt redis.tls key": (deep_merge(REDIS_TLS, {"redis": {"tls": {"caFile": "/ca.crt"}}}),
                                       "additional properties"),
    "schema: redis.tls secret not a name": (deep_merge(REDIS_TLS, {"redis": {"tls": {"caSecret": "Redis CA"}}}),
                                            "/redis/tls/caSecret"),
    "redis.tls with a redis:// url": (deep_merge(REDIS_TLS, {"redis": {"url": BASE["redis"]["url"]}}), "rediss://"),
    "redis.tls without Redis": ({"auth": BASE["auth"], "replicaCount": 1, "redis": {"tls": {"caSecret": "redis-ca"}}},
                                "redis.tls needs"),
}

# ------------------------------------------------- CRD structural schemas
# kubernetes-validate has no schema for CRDs. These hold the fields the
# chart emits to the upstream CRDs' names and types, closed with
# additionalProperties: false so a typo fails. Extend them when a template
# emits a new field.

_META = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_MATCH_LABELS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["matchLabels"],
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_PROM_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_GW_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": spec,
        },
    }


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": _MATCH_LABELS,
            "namespaceSelector": {
                "type": "object", "additionalProperties": False,
                "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
            },
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                               "interval": _PROM_DURATION, "scrapeTimeout": _PROM_DURATION},
            }},
        },
    }),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object",
        "required": ["groups"],
        "additionalProperties": False,
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": _PROM_DURATION,
                "limit": {"type": "integer"},
                "partial_response_strategy": {"type": "string"},
                "query_offset": _PROM_DURATION,
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {
                        "alert": {"type": "string"}, "record": {"type": "string"},
                        "expr": {"type": ["string", "integer"]},
                        "for": _PROM_DURATION, "keep_firing_for": _PROM_DURATION,
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                }},
            },
        }}},
    }),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _resource("gateway.networking.k8s.io/v1", "HTTPRoute", {
        "type": "object",
        "required": ["parentRefs", "rules"],
        "additionalProperties": False,
        "properties": {
            "parentRefs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {k: {"type": "string"} for k in ("group", "kind", "name", "namespace", "sectionName")}
                | {"port": {"type": "integer"}},
            }},
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "rules": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "matches": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"path": {
                            "type": "object", "additionalProperties": False, "required": ["type", "value"],
                            "properties": {"type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                           "value": {"type": "string", "pattern": "^/"}},
                        }},
                    }},
                    "backendRefs": {"type": "array", "items": {
                        "type": "object", "required": ["name", "port"], "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "port": {"type": "integer"},
                                       "weight": {"type": "integer"}},
                    }},
                    "timeouts": {"type": "object", "additionalProperties": False,
                                 "properties": {"request": _GW_DURATION, "backendRequest": _GW_DURATION}},
                    "sessionPersistence": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "sessionName": {"type": "string", "maxLength": 128},
                            "type": {"enum": ["Cookie", "Header"]},
                            "absoluteTimeout": _GW_DURATION,
                            "idleTimeout": _GW_DURATION,
                            "cookieConfig": {"type": "object", "additionalProperties": False,
                                             "properties": {"lifetimeType": {"enum": ["Permanent", "Session"]}}},
                        },
                    },
                },
            }},
        },
    }),
}

# ------------------------------------------------------------- rendering


def render(chart: helm.Chart, values: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str]:
    """Render like `helm template`: (manifests, the YAML stream, NOTES.txt)."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    stream, notes = [], ""
    for path in sorted(out):
        text = out[path]
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in re.split(r"(?m)^---\s*$", text):
            doc = doc.strip()
            if doc:
                stream.append(f"---\n# Source: {path}\n{doc}\n")
    text = "".join(stream)
    docs = [d for d in yaml.safe_load_all(text) if d]
    return docs, text, notes


def find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(docs, kind)
    if len(found) != 1:
        raise AssertionError(f"expected exactly one {kind}, found {len(found)}")
    return found[0]


def yamllint_text(text: str, conf: YamlLintConfig, what: str) -> None:
    problems = [p for p in linter.run(text, conf) if p.level == "error" or p.level == "warning"]
    for p in problems:
        fail(f"yamllint {what}:{p.line}:{p.column}: {p.level}: {p.desc} ({p.rule})")


def kube_validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                if crd is None:
                    fail(f"kubernetes-validate {version}: no schema for {name} ({doc.get('apiVersion')}) "
                         "and no CRD schema in check_chart.py")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"kubernetes-validate --strict {version}: {name}: {path}: {e.message}")
        if crd is not None:
            for err in jsonschema.Draft202012Validator(crd).iter_errors(doc):
                path = ".".join(str(p) for p in err.path)
                fail(f"CRD schema: {name}: {path}: {err.message}")


# ------------------------------------------------------------ assertions


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def chart_values(chart: helm.Chart, values: dict[str, Any]) -> dict[str, Any]:
    return chart.merge_values(values)


def check_common(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        meta = d["metadata"]
        labels = meta.get("labels", {})
        name = f"{d['kind']}/{meta['name']}"
        check(labels.get("app.kubernetes.io/name") == "relay", f"{name}: label app.kubernetes.io/name")
        check(labels.get("app.kubernetes.io/instance") == RELEASE, f"{name}: label app.kubernetes.io/instance")
        check(labels.get("app.kubernetes.io/managed-by") == "Helm", f"{name}: label app.kubernetes.io/managed-by")
        check("helm.sh/chart" in labels, f"{name}: label helm.sh/chart")
        check(meta.get("namespace") == NAMESPACE, f"{name}: namespace {meta.get('namespace')!r}")
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    check(len(kinds) == len(set(kinds)), f"duplicate resources: {kinds}")


def check_deployment(docs: list[dict[str, Any]], v: dict[str, Any]) -> None:
    dep = one(docs, "Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    sel = spec["selector"]["matchLabels"]
    check(sel == {"app.kubernetes.io/name": "relay", "app.kubernetes.io/instance": RELEASE},
          f"selector labels {sel}")
    tmpl_labels = dep["spec"]["template"]["metadata"]["labels"]
    check(all(tmpl_labels.get(k) == x for k, x in sel.items()), "pod labels match the selector")

    # Replicas: from replicaCount, or owned by the HPA.
    if v["autoscaling"]["enabled"]:
        check("replicas" not in spec, "Deployment sets no replicas when the HPA owns them")
    else:
        check(spec.get("replicas") == v["replicaCount"], f"replicas {spec.get('replicas')} != {v['replicaCount']}")
    check(spec["strategy"]["rollingUpdate"]["maxUnavailable"] == v["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
          "rolling update strategy from values")

    check(len(pod["containers"]) == 1, "one container")
    c = pod["containers"][0]
    check(c["ports"] == [{"name": "http", "containerPort": v["relay"]["port"], "protocol": "TCP"}],
          f"container port {c['ports']}")

    # Probes.
    lp, rp, sp = c.get("livenessProbe", {}), c.get("readinessProbe", {}), c.get("startupProbe", {})
    check(lp.get("httpGet") == {"path": "/healthz", "port": "http"}, f"liveness probe GET /healthz: {lp}")
    check(rp.get("httpGet") == {"path": "/readyz", "port": "http"}, f"readiness probe GET /readyz: {rp}")
    check(sp.get("httpGet") == {"path": "/healthz", "port": "http"}, f"startup probe GET /healthz: {sp}")

    # Security context.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    check(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, "pod seccomp RuntimeDefault")
    check(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] != 0, "pod runs as a non-zero uid")
    check(csc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], "container drops ALL capabilities")
    check(not csc.get("capabilities", {}).get("add"), "container adds no capability")
    check(csc.get("runAsNonRoot") is True, "container runAsNonRoot")
    check(csc.get("seccompProfile") == {"type": "RuntimeDefault"}, "container seccomp RuntimeDefault")
    check(pod.get("automountServiceAccountToken") is False, "no service account token mounted")
    for vol in pod.get("volumes", []):
        check("emptyDir" not in vol and "hostPath" not in vol, f"no writable volume: {vol}")
    for m in c.get("volumeMounts", []):
        check(m.get("readOnly") is True or m["name"] not in ("jwt-public-key", "redis-tls"), f"read-only mount {m}")

    # Resources and spreading.
    check(bool(c.get("resources", {}).get("requests", {}).get("cpu")), "CPU request set (the HPA needs it)")
    check(bool(c.get("resources", {}).get("limits", {}).get("memory")), "memory limit set")
    tsc = pod.get("topologySpreadConstraints", [])
    check({t["topologyKey"] for t in tsc} >= {"topology.kubernetes.io/zone", "kubernetes.io/hostname"},
          "spread over zones and nodes")
    for t in tsc:
        check(t.get("labelSelector", {}).get("matchLabels") == sel, f"spread constraint selects the pods: {t}")

    # Shutdown: preStop and the grace period.
    sd = v["shutdown"]
    pre = c.get("lifecycle", {}).get("preStop")
    mode, secs = sd["preStop"]["mode"], sd["preStop"]["seconds"]
    if mode == "sleep":
        check(pre == {"sleep": {"seconds": secs}}, f"native preStop sleep {secs}s: {pre}")
    elif mode == "exec":
        check(pre == {"exec": {"command": ["sleep", str(secs)]}}, f"exec preStop sleep {secs}: {pre}")
    else:
        check(pre is None, f"no preStop with mode none: {pre}")
    pause = secs if mode != "none" else 0
    tgp = pod.get("terminationGracePeriodSeconds")
    check(tgp == pause + sd["graceSeconds"] + sd["marginSeconds"],
          f"terminationGracePeriodSeconds {tgp} != preStop {pause} + grace {sd['graceSeconds']} + margin {sd['marginSeconds']}")
    check(isinstance(tgp, int) and tgp > pause + sd["graceSeconds"],
          f"terminationGracePeriodSeconds {tgp} leaves no margin after preStop + RELAY_SHUTDOWN_GRACE_S")

    # Settings.
    cm_name = c["envFrom"][0]["configMapRef"]["name"]
    cms = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == cm_name]
    if not check(len(cms) == 1, f"envFrom ConfigMap {cm_name} rendered"):
        return
    cfg = cms[0]["data"]
    r = v["relay"]
    expected = {
        "RELAY_ADDR": f"0.0.0.0:{r['port']}",
        "RELAY_KEY_PREFIX": r["keyPrefix"],
        "RELAY_LOG_FORMAT": r["logFormat"],
        "RELAY_LOG": r["logLevel"],
        "RELAY_WEBSOCKET_ONLY": "true" if r["websocketOnly"] else "false",
        "RELAY_LOCATION_TTL_S": str(r["locationTtlSeconds"]),
        "RELAY_LOCATION_MIN_INTERVAL_MS": str(r["locationMinIntervalMs"]),
        "RELAY_CLIENT_EVENTS_PER_S": str(r["clientEventsPerSecond"]),
        "RELAY_MAX_CONNECTIONS": str(r["maxConnections"]),
        "RELAY_MAX_CONNECTIONS_PER_USER": str(r["maxConnectionsPerUser"]),
        "RELAY_MAX_NEW_CONNECTIONS_PER_S": str(r["maxNewConnectionsPerSecond"]),
        "RELAY_HISTORY_SIZE": str(r["historySize"]),
        "RELAY_HISTORY_TTL_S": str(r["historyTtlSeconds"]),
        "RELAY_CLAIM_IDLE_MS": str(r["claimIdleMs"]),
        "RELAY_MAX_DELIVERIES": str(r["maxDeliveries"]),
        "RELAY_WS_MAX_MESSAGE_BYTES": str(r["wsMaxMessageBytes"]),
        "RELAY_WS_MAX_FRAME_BYTES": str(r["wsMaxFrameBytes"]),
        "RELAY_POLLING_MAX_PAYLOAD_BYTES": str(r["pollingMaxPayloadBytes"]),
        "RELAY_PING_INTERVAL_MS": str(r["pingIntervalMs"]),
        "RELAY_PING_TIMEOUT_MS": str(r["pingTimeoutMs"]),
        "RELAY_SHUTDOWN_GRACE_S": str(sd["graceSeconds"]),
        "RELAY_JWT_LEEWAY_S": str(v["auth"]["jwt"]["leewaySeconds"]),
    }
    jwt = v["auth"]["jwt"]
    if jwt["issuer"]:
        expected["RELAY_JWT_ISSUER"] = jwt["issuer"]
    if jwt["audience"]:
        expected["RELAY_JWT_AUDIENCE"] = jwt["audience"]
    if r["corsOrigins"]:
        expected["RELAY_CORS_ORIGINS"] = ",".join(r["corsOrigins"])
    if r.get("workerThreads") is not None:
        expected["RELAY_WORKER_THREADS"] = str(r["workerThreads"])
    if jwt["mode"] == "publicKey":
        expected["RELAY_JWT_PUBLIC_KEY"] = f"/etc/relay/jwt/{jwt['publicKeyItem']}"
    tls = v["redis"].get("tls", {})
    if tls.get("caSecret"):
        expected["RELAY_REDIS_CA_FILE"] = "/etc/relay/redis-tls/ca.crt"
    if tls.get("clientSecret"):
        expected["RELAY_REDIS_CLIENT_CERT"] = "/etc/relay/redis-tls/client.crt"
        expected["RELAY_REDIS_CLIENT_KEY"] = "/etc/relay/redis-tls/client.key"
    check(cfg == expected, f"ConfigMap settings differ: extra/wrong "
          f"{ {k: x for k, x in cfg.items() if expected.get(k) != x} }, missing {sorted(set(expected) - set(cfg))}")
    check(all(isinstance(x, str) for x in cfg.values()), "ConfigMap values are strings")

    # Secrets: only through secretKeyRef, to the right Secret and key.
    env = env_of(c)
    secrets = {s["metadata"]["name"]: s for s in find(docs, "Secret")}
    fullname = dep["metadata"]["name"]

    def secret_ref(var: str, name: str, key: str) -> None:
        e = env.get(var)
        if not check(e is not None, f"{var} is set"):
            return
        check("value" not in e, f"{var} must not be a literal value")
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        check(ref.get("name") == name and ref.get("key") == key, f"{var} from Secret {name}/{key}, got {ref}")
        if name == fullname:
            data = secrets.get(name, {}).get("data", {})
            check(key in data, f"chart Secret {name} has key {key}")

    auth, redis = v["auth"], v["redis"]
    if jwt["mode"] == "secret":
        if auth["existingSecret"]:
            secret_ref("RELAY_JWT_SECRET", auth["existingSecret"], auth["existingSecretKeys"]["jwtSecret"])
        else:
            secret_ref("RELAY_JWT_SECRET", fullname, "jwt-secret")
    else:
        check("RELAY_JWT_SECRET" not in env, "no RELAY_JWT_SECRET with a public key")
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        vols = {x["name"]: x for x in pod.get("volumes", [])}
        check(mounts.get("jwt-public-key", {}).get("mountPath") == "/etc/relay/jwt", "public key mounted at /etc/relay/jwt")
        vol = vols.get("jwt-public-key", {})
        item = [{"key": jwt["publicKeyItem"], "path": jwt["publicKeyItem"]}]
        if jwt["existingPublicKeySecret"]:
            check(vol.get("secret") == {"secretName": jwt["existingPublicKeySecret"], "items": item},
                  f"public key volume from Secret: {vol}")
        else:
            cm = jwt["existingPublicKeyConfigMap"] or f"{fullname}-jwt-public-key"
            check(vol.get("configMap") == {"name": cm, "items": item}, f"public key volume from ConfigMap: {vol}")
            if jwt["publicKey"]:
                pk = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == cm]
                check(len(pk) == 1 and pk[0]["data"].get(jwt["publicKeyItem"], "").strip() == jwt["publicKey"].strip(),
                      "inline public key rendered verbatim into its ConfigMap")
    check_redis_tls(pod, c, tls)
    if auth["existingSecret"] and auth["existingSecretKeys"]["apiKey"]:
        secret_ref("RELAY_API_KEY", auth["existingSecret"], auth["existingSecretKeys"]["apiKey"])
    elif auth["apiKey"] and not auth["existingSecret"]:
        secret_ref("RELAY_API_KEY", fullname, "api-key")
    else:
        check("RELAY_API_KEY" not in env, "publish API off: no RELAY_API_KEY")
    redis_var, other_var = ("REDIS_CLUSTER_URLS", "REDIS_URL") if redis.get("mode") == "cluster" \
        else ("REDIS_URL", "REDIS_CLUSTER_URLS")
    check(other_var not in env, f"only {redis_var} of the two Redis variables")
    if redis["existingSecret"]:
        secret_ref(redis_var, redis["existingSecret"], redis["existingSecretKey"])
    elif redis["url"]:
        secret_ref(redis_var, fullname, "redis-url")
    else:
        check(redis_var not in env, f"embedded mode: no {redis_var}")
    for name, e in env.items():
        if name in ("RELAY_JWT_SECRET", "RELAY_API_KEY", "REDIS_URL", "REDIS_CLUSTER_URLS"):
            continue
        check(not re.search(r"SECRET|PASSWORD|API_KEY|REDIS_URL", name) or "valueFrom" in e,
              f"{name} looks secret but is a literal")
    for key in ("RELAY_JWT_SECRET", "RELAY_API_KEY", "REDIS_URL"):
        check(key not in cfg, f"{key} must not be in the ConfigMap")
    if v["relay"]["nodeIdFromPodName"]:
        check(env.get("RELAY_NODE_ID", {}).get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.name"}},
              "RELAY_NODE_ID from metadata.name")
    if v["relay"].get("workerThreads") is None:
        want = {"resourceFieldRef": {"containerName": "relay", "resource": "requests.cpu", "divisor": "1"}}
        check(env.get("RELAY_WORKER_THREADS", {}).get("valueFrom") == want,
              "RELAY_WORKER_THREADS from the CPU request in whole cores")
    else:
        check("RELAY_WORKER_THREADS" not in env, "a set relay.workerThreads is the ConfigMap's")
    for extra in v["extraEnv"]:
        check(env.get(extra["name"]) == extra, f"extraEnv {extra['name']} passed through")

    # Chart Secret: exactly the values given, none from an existing Secret.
    want_keys = set()
    if jwt["mode"] == "secret" and not auth["existingSecret"]:
        want_keys.add("jwt-secret")
    if auth["apiKey"] and not auth["existingSecret"]:
        want_keys.add("api-key")
    if redis["url"] and not redis["existingSecret"]:
        want_keys.add("redis-url")
    if want_keys:
        s = secrets.get(fullname)
        if check(s is not None, f"chart Secret {fullname} rendered"):
            check(set(s.get("data", {})) == want_keys, f"chart Secret keys {sorted(s.get('data', {}))} != {sorted(want_keys)}")
            check("stringData" not in s, "chart Secret uses data (base64), not stringData")
    else:
        check(fullname not in secrets, "no chart Secret when every secret comes from an existing Secret")

    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    for key in ("checksum/config", "checksum/secret"):
        check(bool(re.fullmatch(r"[0-9a-f]{64}", str(ann.get(key, "")))), f"pod annotation {key} is a sha256")


def check_redis_tls(pod: dict[str, Any], c: dict[str, Any], tls: dict[str, Any]) -> None:
    """redis.tls: the CA and client Secrets in one read-only projected
    volume at /etc/relay/redis-tls (the ConfigMap names its files)."""
    mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "redis-tls"]
    vols = [x for x in pod.get("volumes", []) if x["name"] == "redis-tls"]
    sources = []
    if tls.get("caSecret"):
        sources.append({"secret": {"name": tls["caSecret"], "items": [{"key": tls["caKey"], "path": "ca.crt"}]}})
    if tls.get("clientSecret"):
        sources.append({"secret": {"name": tls["clientSecret"], "items": [
            {"key": tls["clientCertKey"], "path": "client.crt"},
            {"key": tls["clientKeyKey"], "path": "client.key"}]}})
    if not sources:
        check(not mounts and not vols, f"no redis-tls volume without redis.tls: {mounts} {vols}")
        return
    check(mounts == [{"name": "redis-tls", "mountPath": "/etc/relay/redis-tls", "readOnly": True}],
          f"redis-tls mounted read-only at /etc/relay/redis-tls: {mounts}")
    check(vols == [{"name": "redis-tls", "projected": {"sources": sources}}],
          f"redis-tls projected volume from the Secrets' items: {vols} != {sources}")
    paths = {m["mountPath"] for m in c.get("volumeMounts", [])}
    check(len(paths) == len(c.get("volumeMounts", [])), f"distinct mount paths: {sorted(paths)}")


def check_checksums(chart: helm.Chart) -> None:
    """A changed setting or secret changes the pod template (rolls the pods)."""
    def ann(values: dict[str, Any]) -> dict[str, str]:
        docs, _, _ = render(chart, values)
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]

    base = ann(BASE)
    setting = ann(deep_merge(BASE, {"relay": {"historySize": 50}}))
    secret = ann(deep_merge(BASE, {"auth": {"jwt": {"secret": "rotated"}}}))
    check(base["checksum/config"] != setting["checksum/config"], "checksum/config changes with a setting")
    check(base["checksum/secret"] == setting["checksum/secret"], "checksum/secret unchanged by a setting")
    check(base["checksum/secret"] != secret["checksum/secret"], "checksum/secret changes with a secret")


def check_optional(docs: list[dict[str, Any]], v: dict[str, Any], notes: str) -> None:
    polling = not v["relay"]["websocketOnly"]
    fullname = one(docs, "Deployment")["metadata"]["name"]

    svc = one(docs, "Service")
    check(svc["spec"]["ports"] == [{"name": "http", "port": v["service"]["port"], "targetPort": "http", "protocol": "TCP"}],
          f"Service port: {svc['spec']['ports']}")
    check(svc["spec"].get("sessionAffinity") == v["service"]["sessionAffinity"], "Service sessionAffinity from values")

    # PDB
    pdbs = find(docs, "PodDisruptionBudget")
    if v["podDisruptionBudget"]["enabled"]:
        if check(len(pdbs) == 1, "PodDisruptionBudget present when enabled"):
            pspec = pdbs[0]["spec"]
            check(pspec["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
                  "PDB selects the Deployment's pods")
            check(("minAvailable" in pspec) != ("maxUnavailable" in pspec), "PDB sets one of minAvailable/maxUnavailable")
    else:
        check(not pdbs, "no PodDisruptionBudget when disabled")

    # HPA
    hpas = find(docs, "HorizontalPodAutoscaler")
    a = v["autoscaling"]
    if a["enabled"]:
        if check(len(hpas) == 1, "HPA present when enabled"):
            h = hpas[0]
            check(h["apiVersion"] == "autoscaling/v2", "HPA is autoscaling/v2")
            check(h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": fullname},
                  "HPA targets the Deployment")
            check((h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) == (a["minReplicas"], a["maxReplicas"]), "HPA bounds")
            metrics = h["spec"]["metrics"]
            check({"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": a["targetCPUUtilizationPercentage"]}}} in metrics,
                "HPA scales on CPU utilization")
            sockets = [m for m in metrics if m["type"] == "Pods"]
            if a["connectedSockets"]["enabled"]:
                check(sockets == [{"type": "Pods", "pods": {
                    "metric": {"name": "relay_connected_sockets"},
                    "target": {"type": "AverageValue", "averageValue": a["connectedSockets"]["averageValue"]}}}],
                    f"HPA scales on relay_connected_sockets per pod: {sockets}")
            else:
                check(not sockets, "no sockets metric unless enabled")
            check(h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300,
                  "HPA scales down slowly (it disconnects clients)")
    else:
        check(not hpas, "no HPA when disabled")

    # Ingress
    ings = find(docs, "Ingress")
    ing_v = v["ingress"]
    if ing_v["enabled"]:
        if check(len(ings) == 1, "Ingress present when enabled"):
            ing = ings[0]
            ann = ing["metadata"].get("annotations", {})
            for k, x in ing_v["annotations"].items():
                check(ann.get(k) == x, f"Ingress annotation {k} passed through")
            nginx = "nginx.ingress.kubernetes.io/"
            sticky_keys = {nginx + "affinity", nginx + "affinity-mode", nginx + "session-cookie-name",
                           nginx + "session-cookie-max-age"}
            if ing_v["nginx"]["enabled"]:
                t = str(ing_v["nginx"]["proxyTimeoutSeconds"])
                check(ann.get(nginx + "proxy-read-timeout") == t and ann.get(nginx + "proxy-send-timeout") == t,
                      "ingress-nginx websocket timeouts")
                check(int(t) * 1000 > v["relay"]["pingIntervalMs"], "proxy timeout exceeds the ping interval")
                if polling:
                    check(ann.get(nginx + "affinity") == "cookie", "ingress-nginx cookie affinity while polling")
                    check(ann.get(nginx + "affinity-mode") == "persistent", "ingress-nginx affinity-mode persistent")
                    check(ann.get(nginx + "session-cookie-name") == ing_v["nginx"]["cookieName"], "affinity cookie name")
                    check(ann.get(nginx + "session-cookie-max-age") == str(ing_v["nginx"]["cookieMaxAgeSeconds"]),
                          "affinity cookie max age")
            if not polling:
                check(not (sticky_keys & set(ann)), f"no sticky-session annotations with websocketOnly: {sorted(ann)}")
            for k, x in ing_v["stickySessionAnnotations"].items():
                check((ann.get(k) == x) == polling, f"stickySessionAnnotations {k} present only while polling")
            backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
            check(all(b == {"name": fullname, "port": {"name": "http"}} for b in backends), f"Ingress backends: {backends}")
            check([r.get("host") for r in ing["spec"]["rules"]] == [h["host"] for h in ing_v["hosts"]], "Ingress hosts")
            if ing_v["className"]:
                check(ing["spec"].get("ingressClassName") == ing_v["className"], "ingressClassName")
            check(len(ing["spec"].get("tls", [])) == len(ing_v["tls"]), "Ingress TLS")
    else:
        check(not ings, "no Ingress when disabled")

    # HTTPRoute
    routes = find(docs, "HTTPRoute")
    hr = v["httpRoute"]
    if hr["enabled"]:
        if check(len(routes) == 1, "HTTPRoute present when enabled"):
            rspec = routes[0]["spec"]
            check(rspec["parentRefs"] == hr["parentRefs"], "HTTPRoute parentRefs")
            rule = rspec["rules"][0]
            check(rule["backendRefs"] == [{"name": fullname, "port": v["service"]["port"]}], "HTTPRoute backend")
            sp = rule.get("sessionPersistence")
            if hr["sessionPersistence"]["enabled"] and polling:
                check(sp is not None and sp["type"] == "Cookie" and sp["sessionName"] == hr["sessionPersistence"]["sessionName"],
                      f"HTTPRoute cookie sessionPersistence while polling: {sp}")
            else:
                check(sp is None, f"no HTTPRoute sessionPersistence with websocketOnly or disabled: {sp}")
    else:
        check(not routes, "no HTTPRoute when disabled")

    # ServiceMonitor
    sms = find(docs, "ServiceMonitor")
    if v["serviceMonitor"]["enabled"]:
        if check(len(sms) == 1, "ServiceMonitor present when enabled"):
            sm = sms[0]
            check(sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics",
                  "ServiceMonitor scrapes /metrics on port http")
            check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
                  "ServiceMonitor selects the Service")
            for k, x in v["serviceMonitor"]["labels"].items():
                check(sm["metadata"]["labels"].get(k) == x, f"ServiceMonitor label {k}")
    else:
        check(not sms, "no ServiceMonitor when disabled")

    # PrometheusRule
    rules = find(docs, "PrometheusRule")
    if v["prometheusRule"]["enabled"]:
        if check(len(rules) == 1, "PrometheusRule present when enabled"):
            alerts = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
            check(rules[0]["spec"]["groups"] == alerts["groups"], "PrometheusRule groups == files/alerts.yml groups")
            for k, x in v["prometheusRule"]["labels"].items():
                check(rules[0]["metadata"]["labels"].get(k) == x, f"PrometheusRule label {k}")
    else:
        check(not rules, "no PrometheusRule when disabled")

    # NOTES.txt
    check("relay" in notes and "rollout status" in notes, "NOTES.txt renders")
    if polling:
        check("sticky" in notes, "NOTES.txt mentions sticky sessions while polling")
    else:
        check("WebSocket-only" in notes, "NOTES.txt mentions websocket-only mode")


# --------------------------------------------------------- static checks


def check_static(chart: helm.Chart) -> None:
    # The version lives in the workspace; the server's own manifest names it.
    cargo = dict(tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"])
    cargo["name"] = tomllib.loads((ROOT / "crates/relay/Cargo.toml").read_text())["package"]["name"]
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    check(meta["apiVersion"] == "v2", "Chart.yaml apiVersion v2")
    check(meta["name"] == cargo["name"] == "relay", "chart and package named relay")
    check(str(meta["appVersion"]) == cargo["version"],
          f"Chart.yaml appVersion {meta['appVersion']} != Cargo.toml version {cargo['version']}")

    for rel in ("Chart.yaml", "values.yaml", "files/alerts.yml"):
        yamllint_text((CHART / rel).read_text(), YAMLLINT_SOURCE, f"helm/relay/{rel}")
    try:
        json.loads((CHART / "values.schema.json").read_text())
    except ValueError as e:
        fail(f"values.schema.json is not JSON: {e}")
    try:
        chart.validate_schema(None)
    except helm.HelmError as e:
        fail(f"values.yaml does not satisfy values.schema.json: {e}")

    alerts = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    check(isinstance(alerts, dict) and isinstance(alerts.get("groups"), list) and alerts["groups"],
          "files/alerts.yml has a non-empty groups list")
    upstream = ROOT / "prometheus" / "alerts.yml"
    if upstream.exists():
        check(upstream.read_text() == (CHART / "files" / "alerts.yml").read_text(),
              "helm/relay/files/alerts.yml must be a copy of prometheus/alerts.yml (cp prometheus/alerts.yml helm/relay/files/)")

    check_values_commented()
    check_dockerfile(cargo, chart.values)


def check_dockerfile(cargo: dict[str, Any], values: dict[str, Any]) -> None:
    cmds = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    by = lambda name: [c for c in cmds if c.cmd == name]  # noqa: E731
    args = dict(a.value[0].split("=", 1) for a in by("ARG") if "=" in a.value[0])
    froms = by("FROM")
    if not check(len(froms) == 2, f"Dockerfile: two stages (build, runtime), found {len(froms)}"):
        return
    build_image = froms[0].value[0].replace("${RUST_VERSION}", args.get("RUST_VERSION", ""))
    check(build_image == f"rust:{cargo['rust-version']}-bookworm"
          or build_image == f"rust:{cargo['rust-version']}-slim-bookworm",
          f"Dockerfile: builder {build_image} is not rust:{cargo['rust-version']}-bookworm (Cargo.toml rust-version)")
    runs = " ".join(" ".join(c.value) for c in by("RUN") if c.start_line < froms[1].start_line)
    check("cargo build --release --locked" in runs, "Dockerfile: builds with cargo build --release --locked")
    check("target/release/relay" in runs, "Dockerfile: takes target/release/relay")
    check(froms[1].value[0] == "gcr.io/distroless/cc-debian12:nonroot",
          f"Dockerfile: runtime base {froms[1].value[0]}")
    copies = [c for c in by("COPY") if c.start_line > froms[1].start_line]
    check(len(copies) == 1 and copies[0].flags == ("--from=build",) and copies[0].value[-1] == "/relay",
          "Dockerfile: copies only the binary from the build stage to /relay")
    users = [c.value[0] for c in by("USER")]
    check(users[-1:] in (["nonroot"], ["65532"], ["65532:65532"]), f"Dockerfile: runs as nonroot, USER {users}")
    check([c.value for c in by("EXPOSE")] == [(str(values["relay"]["port"]),)],
          "Dockerfile: EXPOSE matches the chart's relay.port")
    ep, cmd = by("ENTRYPOINT"), by("CMD")
    check(len(ep) == 1 and ep[0].json and ep[0].value == ("/relay",), "Dockerfile: ENTRYPOINT [\"/relay\"]")
    check(len(cmd) == 1 and cmd[0].json and cmd[0].value == ("serve",), "Dockerfile: CMD [\"serve\"]")
    ignored = {ln.strip().strip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    check({"target", ".git"} <= ignored, ".dockerignore: excludes target and .git")
    check(not ({"src", "Cargo.toml", "Cargo.lock", "tests", "*", "**"} & ignored),
          ".dockerignore: keeps src, tests, Cargo.toml and Cargo.lock in the context")


def check_values_commented() -> None:
    """Every leaf key of values.yaml has a comment on the line above it, or
    sits under a commented parent (Kubernetes objects passed through)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, covered)
    prev = ""
    for n, line in enumerate(lines, 1):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if m and not line.lstrip().startswith("#"):
            indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
            while stack and stack[-1][0] >= indent:
                stack.pop()
            covered = prev.lstrip().startswith("#") or any(c for _, c in stack)
            leaf = rest != "" and not rest.startswith("#")
            if leaf and not covered:
                fail(f"values.yaml:{n}: {key} has no comment")
            stack.append((indent, covered))
        elif line.strip().startswith("- "):
            pass
        if line.strip():
            prev = line


# ------------------------------------------------------------------- main


def run_case(chart: helm.Chart, name: str, values: dict[str, Any]) -> None:
    print(f"case {name}")
    try:
        chart.validate_schema(values)
    except helm.HelmError as e:
        fail(f"{name}: values rejected by values.schema.json: {e}")
        return
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    for msg in report.get("messages", []):
        if msg.get("severity", 0) >= 2:
            fail(f"{name}: helm lint --strict: {msg['path']}: {msg['error'].strip()}")
    for err in report.get("errors", []):
        fail(f"{name}: helm lint --strict: {err.strip()}")
    try:
        docs, text, notes = render(chart, values)
    except helm.HelmError as e:
        fail(f"{name}: render failed: {e}")
        return
    yamllint_text(text, YAMLLINT_RENDERED, f"{name}/rendered")
    kube_validate(docs)
    v = chart_values(chart, values)
    checks: list[Callable[[], None]] = [
        lambda: check_common(docs),
        lambda: check_deployment(docs, v),
        lambda: check_optional(docs, v, notes),
    ]
    for c in checks:
        try:
            c()
        except (AssertionError, KeyError, TypeError, IndexError) as e:
            fail(f"{name}: {type(e).__name__}: {e}")
    kinds = sorted(f"{d['kind']}" for d in docs)
    print(f"  {len(docs)} manifests: {', '.join(kinds)}")


def run_bad_case(chart: helm.Chart, name: str, values: dict[str, Any], expect: str) -> None:
    try:
        render(chart, values)
    except (helm.HelmValuesError, helm.HelmRenderError) as e:
        check(expect in str(e), f"bad case {name!r}: rejected, but the message lacks {expect!r}: {e}")
        return
    fail(f"bad case {name!r}: rendered, but must be rejected")


def guard(what: str, fn: Callable[[], None]) -> None:
    """Runs one group of checks; an unexpected error fails that group only."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported as a failure, with its type
        fail(f"{what}: {type(e).__name__}: {str(e).strip()}")


def main() -> int:
    started = time.monotonic()
    helm.disable_logging()
    print(f"helm SDK {helm.helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}, "
          f"Kubernetes schemas {', '.join(KUBE_VERSIONS)}")
    try:
        chart = helm.Chart.load(CHART)
    except helm.HelmError as e:
        print(f"check_chart: FAILED: cannot load the chart {CHART}: {e}")
        return 1
    with chart:
        guard("static checks", lambda: check_static(chart))
        for name, values in CASES.items():
            guard(f"case {name}", lambda: run_case(chart, name, values))
        guard("checksums", lambda: check_checksums(chart))
        print(f"bad cases: {len(BAD_CASES)}")
        for name, (values, expect) in BAD_CASES.items():
            guard(f"bad case {name}", lambda: run_bad_case(chart, name, values, expect))
    elapsed = time.monotonic() - started
    if FAILURES:
        print(f"\ncheck_chart: {len(FAILURES)} failure(s) in {elapsed:.1f}s:")
        for f in FAILURES:
            print(f"  - {f}")
        return 1
    print(f"check_chart: all checks passed ({len(CASES)} value sets, {len(BAD_CASES)} rejected sets) in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
