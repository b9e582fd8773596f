"""The rendered pod against herald: herald.toml keys and env names it
accepts, and the real binary started with the pod's args, env and config.

The binary gets only the environment the pod spec gives it (herald rejects
unknown HERALD_* variables, so nothing may leak in from the caller)."""

import base64
import json
import os
import re
import selectors
import signal
import subprocess
import tempfile
import tomllib
from pathlib import Path

from .accepts import check_env_names, check_toml_keys
from .runner import Skip, must

# A throwaway P-256 public key (its private half was discarded), to give the
# pod's JWT file variables something real to load.
TEST_PEM = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEChGFp8r4FtAO/0DrVyPBck4zh/cN
kZ0fbunLJBVAi4EfcVfO0okpaKxEffEvYvwFfH54R8RZvcikVgfMRG+zeQ==
-----END PUBLIC KEY-----
"""
# Stand-ins for secretKeyRef values, long enough for herald's rules.
DUMMY = {
    "HERALD_RECONNECT_SECRET": "check-reconnect-secret-0001",
    "HERALD_API_KEY": "check-api-key-00000001",
    "HERALD_JWT_SECRET": "check-jwt-secret-0123456789abcdef0123",
}
CONFIG_PATH = "/etc/herald/herald.toml"


def herald_parts(docs):
    """The rendered herald.toml and the gateway container."""
    toml_text = next(
        (d["data"]["herald.toml"] for d in docs if d["kind"] == "ConfigMap" and "herald.toml" in d.get("data", {})),
        None,
    )
    must(toml_text is not None, "no ConfigMap with herald.toml rendered")
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    c = next((p["containers"][0] for p in pods if p["containers"][0]["name"] == "herald"), None)
    must(c is not None, "no Deployment with a herald container rendered")
    must(f"--config={CONFIG_PATH}" in c["args"], "container args lack --config")
    return toml_text, c


def config_matches(ctx, docs, label):
    toml_text, c = herald_parts(docs)
    check_toml_keys(ctx, tomllib.loads(toml_text), f"{label} herald.toml")
    check_env_names(ctx, [e["name"] for e in c.get("env", [])], f"{label} Deployment env")
    return f"keys match docs, env names known to {ctx.env[1]}"


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _key_files(d):
    Path(d, "public.pem").write_text(TEST_PEM)
    der = base64.b64decode("".join(TEST_PEM.strip().splitlines()[1:-1]))
    jwk = {"kty": "EC", "crv": "P-256", "kid": "check", "alg": "ES256", "x": _b64(der[-64:-32]), "y": _b64(der[-32:])}
    Path(d, "jwks.json").write_text(json.dumps({"keys": [jwk]}))


def service_links(docs):
    """The variables Kubernetes adds for every Service unless the pod sets
    `enableServiceLinks: false`; a release named "herald" makes them HERALD_*."""
    pod = next(d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment")
    if pod.get("enableServiceLinks") is False:
        return {}
    env = {}
    for svc in (d for d in docs if d["kind"] == "Service"):
        name = svc["metadata"]["name"].upper().replace("-", "_")
        port = svc["spec"]["ports"][0]["port"]
        env[f"{name}_SERVICE_HOST"] = "10.0.0.1"
        env[f"{name}_SERVICE_PORT"] = str(port)
        env[f"{name}_PORT"] = f"tcp://10.0.0.1:{port}"
    return env


def pod_env(c, d, links):
    """The container's env as the pod would see it, with local stand-ins."""
    env = {"RUST_BACKTRACE": "0", **links}
    for e in c.get("env", []):
        n, src = e["name"], e.get("valueFrom", {})
        if n == "HERALD_REDIS_URL":
            env[n] = "redis://127.0.0.1:1"  # nowhere: herald starts without Redis
        elif "value" in e:
            env[n] = e["value"].replace("/etc/herald/jwt", d)
        elif "fieldRef" in src:
            env[n] = "herald-check-pod"
        else:
            must(n in DUMMY, f"no stand-in value for {n} ({src})")
            env[n] = DUMMY[n]
    return env


def pod_args(c, d):
    """Ports become ephemeral (admin on loopback); the config path points at the temp copy."""
    out = []
    for a in c["args"]:
        a = a.replace(CONFIG_PATH, f"{d}/herald.toml")
        a = re.sub(r"^--listen=.*", "--listen=0.0.0.0:0", a)
        out.append(re.sub(r"^--admin-listen=.*", "--admin-listen=127.0.0.2:0", a))
    return out


def _stale(binary):
    sources = [p.stat().st_mtime for p in Path("gateway/src").rglob("*.rs")]
    if sources and binary.stat().st_mtime < max(sources):
        return f" [{binary} is older than gateway/src: rebuild it]"
    return ""


def pod_starts(ctx, docs, label):
    """Run the container's args and env against the real binary until it listens."""
    if ctx.binary is None:
        raise Skip(ctx.no_binary)
    must(os.access(ctx.binary, os.X_OK), f"DEPLOYCHECK_BIN={ctx.binary}: not an executable file")
    toml_text, c = herald_parts(docs)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "herald.toml").write_text(toml_text)
        _key_files(d)
        p = subprocess.Popen(
            [ctx.binary, *pod_args(c, d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=pod_env(c, d, service_links(docs)),
            text=True,
        )
        try:
            sel = selectors.DefaultSelector()
            sel.register(p.stdout, selectors.EVENT_READ)
            line = p.stdout.readline() if sel.select(timeout=15) else ""
            if "herald listening" not in line:
                p.kill()
                err = p.communicate(timeout=5)[1].strip().splitlines()
                err = err[next((i for i, x in enumerate(err) if x.startswith("Error")), 0) :][:6]
                raise AssertionError(f"{label}: herald did not start{_stale(ctx.binary)}:\n" + "\n".join(err))
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            p.stdout.close()
            p.stderr.close()
    return f"{ctx.binary} starts with the pod's args and env"
