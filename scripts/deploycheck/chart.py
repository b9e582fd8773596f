"""The Helm chart (helm/herald) through the Helm SDK: lint --strict and offline
rendering of each values case, every template rendering something in some
case, values.schema.json against docs/configuration.md, and values the
schema or the templates must reject."""

import re

import helm_python as helm
import yaml

from .files import CHART
from .runner import must, read_text

# Values cases: a dict, or a values file in the chart.
CASES = {
    "default": {},
    "production": CHART / "ci/production-values.yaml",
    "cluster-tls": CHART / "ci/cluster-tls-values.yaml",
    "shards": CHART / "ci/shards-values.yaml",
    "shards-secret-tls": {
        "replicaCount": 2,
        "redis": {"shardsExistingSecret": "herald-redis-shards", "tls": {"caSecret": "redis-ca", "caKey": "ca.pem"}},
    },
    "bundled-redis": {
        "replicaCount": 2,
        "redis": {"bundled": {"enabled": True}},
        "secrets": {
            "reconnectSecrets": ["new-secret-0123456789", "old-secret-0123456789"],
            "apiKeys": ["api-key-0123456789abcdef"],
        },
        "jwt": {"secret": "herald-jwt", "publicKeyKey": "public.pem"},
        "preStop": {"native": True},
        "networkPolicy": {"enabled": True},
        "config": {
            "server": {"allow_open": False},
            "session": {"ping_interval": "20s", "max_payload": 131072},
            "broker": {"history_size": 0, "timeout": "1s"},
        },
    },
    "hs256": {
        "secrets": {"jwtSecret": "jwt-secret-0123456789-0123456789ab"},
        "config": {
            "server": {"allow_open": False},
            "auth": {"jwt_algorithm": "HS256", "max_connections_per_user": 0},
            "namespaces": {"eu.orders": {"history_size": 0}},
        },
    },
}

# (check name, values, expected error, text the error must contain)
REJECTS = [
    ('rejects replicaCount: "three"', {"replicaCount": "three"}, helm.HelmValuesError, "/replicaCount"),
    ("rejects unknown config key", {"config": {"session": {"ping_intervall": "1s"}}}, helm.HelmValuesError,
     "ping_intervall"),
    ('rejects subscribe: "everyone"', {"config": {"channels": {"subscribe": "everyone"}}}, helm.HelmValuesError,
     "subscribe"),
    ("rejects an invalid namespace name", {"config": {"namespaces": {"a b": {}}}}, helm.HelmValuesError, "a b"),
    ("rejects jwt_algorithm without its key source", {"config": {"auth": {"jwt_algorithm": "ES256"}}},
     helm.HelmRenderError, "jwt_algorithm ES256 needs a public key"),
    ("rejects duration without unit", {"config": {"broker": {"history_ttl": "300"}}}, helm.HelmValuesError,
     "history_ttl"),
    ("rejects a short HS256 secret", {"secrets": {"jwtSecret": "too-short"}}, helm.HelmValuesError, "jwtSecret"),
    ("rejects two JWT key sources", {"secrets": {"jwtSecret": "x" * 32}, "jwt": {"configMap": "k", "jwksKey": "j"}},
     helm.HelmRenderError, "one JWT key source"),
    ("rejects no auth without allow_open", {"config": {"server": {"allow_open": False}}}, helm.HelmRenderError,
     "no client authentication"),
    ("rejects 3 replicas without Redis", {"replicaCount": 3}, helm.HelmRenderError, "needs Redis"),
    ("rejects two Redis sources", {"redis": {"url": "redis://r:6379", "bundled": {"enabled": True}}},
     helm.HelmRenderError, "only one"),
    ("rejects shards with redis.url", {"redis": {"url": "redis://r:6379", "shards": ["redis://a:6379"]}},
     helm.HelmRenderError, "only one"),
    ("rejects shards in values and in a Secret",
     {"redis": {"shards": ["redis://a:6379"], "shardsExistingSecret": "s"}}, helm.HelmRenderError, "only one"),
    ("rejects an unknown Redis URL scheme", {"redis": {"url": "http://r:6379"}}, helm.HelmValuesError, "/redis/url"),
    ("rejects a Redis Cluster as a shard", {"redis": {"shards": ["redis+cluster://a:6379"]}}, helm.HelmValuesError,
     "/redis/shards/0"),
    ("rejects redis.tls with the bundled Redis", {"redis": {"bundled": {"enabled": True}, "tls": {"caSecret": "ca"}}},
     helm.HelmRenderError, "the bundled Redis has no TLS"),
    ("rejects redis.tls without Redis", {"redis": {"tls": {"clientCertSecret": "c"}}}, helm.HelmRenderError,
     "redis.tls.* needs a rediss:// Redis"),
    ("rejects redis.tls with a redis+cluster:// url", {"redis": {"url": "redis+cluster://a:6379",
     "tls": {"caSecret": "ca"}}}, helm.HelmRenderError, "rediss+cluster:// redis.url"),
    ("rejects redis.tls with a plain shard", {"redis": {"shards": ["rediss://a:6379", "redis://:pw@b:6379"],
     "tls": {"caSecret": "ca"}}}, helm.HelmRenderError, "redis://***@b:6379 is not rediss://"),
]  # fmt: skip

# [auth] keys the chart sets from secrets.* and jwt.* (environment), never from config.auth.
AUTH_FROM_ENV = {"jwt_secret", "jwt_public_key", "jwks_file", "issuer", "audience"}


def values_of(case):
    return yaml.safe_load(read_text(case)) if not isinstance(case, dict) else case


def lint(ctx, values):
    rep = helm.lint(str(CHART), values, strict=True, kube_version="v" + ctx.kube)
    bad = [m for m in rep["messages"] if m["severity"] >= 2] + [{"error": e} for e in rep["errors"]]
    must(not bad, "; ".join(f"{m.get('path', '')}: {m['error'].strip()}" for m in bad))
    return None


def render(values, name="herald", namespace="herald"):
    """(objects, chart-relative paths of the templates that rendered at least one)."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name=name, namespace=namespace, is_install=True)
    docs, used = [], set()
    for path, text in sorted(files.items()):
        if path.endswith(".yaml"):
            objs = [d for d in yaml.safe_load_all(text) if d]
            docs += objs
            if objs:
                used.add(path.split("/", 1)[1])  # drop the chart name
    return docs, used


def templates_render(used, cases):
    """Every .yaml template renders at least one object in some case."""
    templates = sorted(str(p.relative_to(CHART)) for p in (CHART / "templates").glob("*.yaml"))
    idle = [t for t in templates if t not in used]
    must(not idle, f"render nothing in any of {', '.join(cases)}: {', '.join(idle)}")
    return f"{len(templates)} templates"


def schema_matches_docs(ctx):
    must((CHART / "values.schema.json").is_file(), f"{CHART}/values.schema.json: missing")
    with helm.Chart.load(str(CHART)) as chart:
        schema = chart.schema
    doc = ctx.doc_keys
    props = schema["properties"]["config"]["properties"]

    def resolve(node):
        ref = node.get("$ref", "")
        must(not ref or ref.startswith("#/definitions/"), f"values.schema.json: unexpected $ref {ref}")
        return schema["definitions"][ref.rsplit("/", 1)[1]] if ref else node

    def keys(node, where):
        node = resolve(node)
        must(
            node.get("additionalProperties") is False,
            f"values.schema.json: config.{where} lacks additionalProperties: false",
        )
        return {f"{where}.{k}" for k in node["properties"]}

    tables = {"server", "session", "broker", "auth", "channels", "namespaces"}
    extra = set(props) - tables - doc[""]
    for t in ("server", "session", "auth", "channels"):
        extra |= keys(props[t], t) - {f"{t}.{k}" for k in doc[t]}
    extra |= keys(props["broker"], "broker") - {f"broker.{k}" for k in doc["broker.memory"] | doc["broker.redis"]}
    ns = props["namespaces"]
    must(
        ns.get("additionalProperties") is False and len(ns.get("patternProperties", {})) == 1,
        "values.schema.json: config.namespaces needs one patternProperties entry and additionalProperties: false",
    )
    ((pattern, rule),) = ns["patternProperties"].items()
    for name, ok in (("chat", True), ("eu.orders", True), ("a" * 64, True), ("", False), ("a b", False),
                     ("a" * 65, False)):  # fmt: skip
        verdict = "rejects" if ok else "accepts"
        matches = bool(re.search(pattern, name))
        must(matches == ok, f"values.schema.json: namespace pattern {pattern} {verdict} {name!r}")
    extra |= keys(rule, "namespaces.NAME") - {f"namespaces.NAME.{k}" for k in doc["namespaces.NAME"]}
    must(not extra, f"values.schema.json allows config keys that docs/configuration.md does not list: {sorted(extra)}")
    owned = keys(props["auth"], "auth") & {f"auth.{k}" for k in AUTH_FROM_ENV}
    must(not owned, f"values.schema.json allows [auth] keys the chart sets from secrets.*/jwt.*: {sorted(owned)}")
    return None


def must_fail(values, error, expect):
    with helm.Chart.load(str(CHART)) as chart:
        try:
            chart.render(values, name="herald", namespace="herald")
        except error as e:
            must(expect in str(e), f"failed, but not as expected: {e}")
            return None
    raise AssertionError(f"values {values} were accepted")
