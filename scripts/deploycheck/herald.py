"""The rendered pod against herald: herald.toml keys and env names it
accepts, and the real binary started with the pod's args, env and config.

The binary gets only the environment the pod spec gives it (herald rejects
unknown HERALD_* variables, so nothing may leak in from the caller). Files
that Secret and ConfigMap volumes mount (JWT keys, Redis TLS certificates)
are written under a temporary directory as stand-ins (a throwaway public key,
JWKS, or a self-signed certificate and key made with openssl), and env values
pointing into those mounts point there instead. Redis URLs keep their scheme,
user, Sentinel master and db, with the hosts replaced by closed local ports:
herald checks them and starts without reaching Redis."""

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
TLS_ENV = ("HERALD_REDIS_TLS_CA_FILE", "HERALD_REDIS_TLS_CERT_FILE", "HERALD_REDIS_TLS_KEY_FILE")


def herald_parts(docs, with_pod=False):
    """The rendered herald.toml and the gateway container (and its pod spec with with_pod)."""
    toml_text = next(
        (d["data"]["herald.toml"] for d in docs if d["kind"] == "ConfigMap" and "herald.toml" in d.get("data", {})),
        None,
    )
    must(toml_text is not None, "no ConfigMap with herald.toml rendered")
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    c = next((p["containers"][0] for p in pods if p["containers"][0]["name"] == "herald"), None)
    must(c is not None, "no Deployment with a herald container rendered")
    must(f"--config={CONFIG_PATH}" in c["args"], "container args lack --config")
    if with_pod:
        return toml_text, c, next(p for p in pods if p["containers"][0] is c)
    return toml_text, c


def config_matches(ctx, docs, label):
    toml_text, c = herald_parts(docs)
    check_toml_keys(ctx, tomllib.loads(toml_text), f"{label} herald.toml")
    check_env_names(ctx, [e["name"] for e in c.get("env", [])], f"{label} Deployment env")
    return f"keys match docs, env names known to {ctx.env[1]}"


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwks():
    der = base64.b64decode("".join(TEST_PEM.strip().splitlines()[1:-1]))
    jwk = {"kty": "EC", "crv": "P-256", "kid": "check", "alg": "ES256", "x": _b64(der[-64:-32]), "y": _b64(der[-32:])}
    return json.dumps({"keys": [jwk]})


def _self_signed(d):
    """(certificate PEM, private key PEM): a throwaway self-signed P-256 certificate."""
    cert, key = Path(d, "standin.crt"), Path(d, "standin.key")
    if not cert.is_file():
        cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
               "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=deploycheck"]  # fmt: skip
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise Skip("openssl is needed for stand-in Redis TLS certificates (apt-get install openssl)") from None
        must(r.returncode == 0, f"openssl could not make a stand-in certificate: {r.stderr.strip()}")
    return cert.read_text(), key.read_text()


def standin(name, d):
    """Stand-in contents of a mounted file, by its name."""
    if name == "public.pem":
        return TEST_PEM
    if name.endswith(".json"):
        return _jwks()
    if name.endswith((".crt", ".pem")):
        return _self_signed(d)[0]
    if name.endswith(".key"):
        return _self_signed(d)[1]
    raise AssertionError(f"no stand-in for a mounted file named {name}")


def mounted_files(c, pod):
    """Container paths of the files Secret, ConfigMap and projected volumes mount
    (subPath mounts aside: herald.toml is written on its own)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    paths = []
    for m in c.get("volumeMounts", []):
        if "subPath" in m:
            continue
        v = volumes.get(m["name"])
        must(v is not None, f"volumeMount {m['name']}: no such volume")
        for src in v.get("projected", {}).get("sources", [v]):
            obj = src.get("secret") or src.get("configMap")
            must(obj and obj.get("items"), f"volume {m['name']}: only Secret/ConfigMap items can be stood in for")
            paths += [f"{m['mountPath'].rstrip('/')}/{it['path']}" for it in obj["items"]]
    return paths


def materialise(c, pod, d):
    """Write a stand-in for every mounted file at d + its container path; returns the mounted directories."""
    for path in mounted_files(c, pod):
        local = Path(d + path)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(standin(local.name, d))
    return [m["mountPath"].rstrip("/") for m in c.get("volumeMounts", []) if "subPath" not in m]


def nowhere(url, port=1):
    """url with its hosts replaced by the closed port 127.0.0.1:port; scheme,
    user, Sentinel master and db stay for herald to check."""
    m = re.fullmatch(r"([^:/]+://)([^@/]*@)?([^/]*)(/.*)?", url)
    if not m or not m[3]:  # not a URL, or a unix socket: herald judges the original
        return url
    return f"{m[1]}{m[2] or ''}127.0.0.1:{port}{m[4] or ''}"


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


def pod_env(c, d, links, mounts=()):
    """The container's env as the pod would see it, with local stand-ins.

    mounts: container directories whose files are written under d."""
    env = {"RUST_BACKTRACE": "0", **links}
    # A URL from a Secret: the scheme herald needs with the pod's TLS files.
    scheme = "rediss" if any(e["name"] in TLS_ENV for e in c.get("env", [])) else "redis"
    for e in c.get("env", []):
        n, src = e["name"], e.get("valueFrom", {})
        if n == "HERALD_REDIS_URL":
            env[n] = nowhere(e["value"]) if "value" in e else f"{scheme}://127.0.0.1:1"
        elif n == "HERALD_REDIS_SHARDS":
            urls = e["value"].split() if "value" in e else [f"{scheme}://secret"] * 2
            env[n] = " ".join(nowhere(u, i) for i, u in enumerate(urls, 1))
        elif "value" in e:
            v = e["value"]
            env[n] = next((d + v for m in mounts if v.startswith(m + "/")), v)
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
    toml_text, c, pod = herald_parts(docs, with_pod=True)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "herald.toml").write_text(toml_text)
        mounts = materialise(c, pod, d)
        p = subprocess.Popen(
            [ctx.binary, *pod_args(c, d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=pod_env(c, d, service_links(docs), mounts),
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
