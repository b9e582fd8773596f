"""What herald accepts: config keys from docs/configuration.md, environment
names from `herald serve --help` (or the docs when there is no binary), and
the checks of rendered herald.toml files and env lists against them."""

import os
import re
import subprocess
from pathlib import Path

from .runner import must, read_text

DOCS = Path("docs/configuration.md")
# herald's rule for namespace names (docs/configuration.md, [namespaces.NAME]).
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def doc_keys():
    """TOML keys per table from docs/configuration.md ('' = top level, 'broker.redis', 'namespaces.NAME', ...).

    A heading may name several tables sharing one key table: ### `[channels]` and `[namespaces.NAME]`."""
    keys, cur = {}, None
    for line in read_text(DOCS).splitlines():
        if line.startswith("## "):
            cur = None
        elif line.startswith("### "):
            cur = [""] if line == "### Top level" else re.findall(r"`\[([\w.]+)\]`", line) or None
        elif cur is not None and (m := re.match(r'^\*\*`type = "(\w+)"`\*\*', line)):
            cur = ["broker." + m.group(1)]
        elif cur is not None and (m := re.match(r"^\| `(\w+)` \|", line)):
            for table in cur:
                keys.setdefault(table, set()).add(m.group(1))
    for t in ("", "server", "session", "broker.memory", "broker.redis", "auth", "channels", "namespaces.NAME"):
        must(keys.get(t), f"{DOCS}: no key table found for [{t or 'top level'}]")
    return keys


def env_names(binary):
    """HERALD_* names herald knows, and where they came from (the binary if it runs, else the docs)."""
    if binary is not None and os.access(binary, os.X_OK):
        out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True, env={}).stdout
        return set(re.findall(r"\[env: (HERALD_\w+)", out)) | {"HERALD_URL"}, str(binary)
    return set(re.findall(r"`(HERALD_[A-Z_]+)`", read_text(DOCS))), str(DOCS)


def check_env_names(ctx, names, where):
    known, source = ctx.env
    bad = sorted(n for n in names if n.startswith("HERALD_") and n not in known)
    must(not bad, f"{where}: unknown to herald ({source}): {', '.join(bad)}")


def check_toml_keys(ctx, doc, where):
    keys = ctx.doc_keys
    for k, v in doc.items():
        if k == "namespaces":
            must(isinstance(v, dict), f"{where}: namespaces must be a table of [namespaces.NAME] tables")
            for name, rule in v.items():
                must(NAMESPACE.fullmatch(name), f"{where}: namespace name {name!r}: use 1-64 of A-Z a-z 0-9 _ - .")
                must(isinstance(rule, dict), f"{where}: namespaces.{name} must be a table")
                extra = set(rule) - keys["namespaces.NAME"]
                must(not extra, f"{where}: [namespaces.{name}] keys not in {DOCS}: {sorted(extra)}")
        elif isinstance(v, dict):
            must(k in {t.split(".")[0] for t in keys if t}, f"{where}: table [{k}] not in {DOCS}")
            table = k
            if k == "broker":
                must(v.get("type") in ("memory", "redis"), f"{where}: broker.type must be memory or redis")
                table = "broker." + v["type"]
            extra = set(v) - keys.get(table, set()) - ({"type"} if k == "broker" else set())
            must(not extra, f"{where}: [{k}] keys not in {DOCS}: {sorted(extra)}")
        else:
            must(k in keys[""], f"{where}: top-level key {k!r} not in {DOCS}")
