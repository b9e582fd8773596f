"""What every check shares: the Kubernetes version, the output directory, the
herald binary to start, and (read once, on first use) what herald accepts."""

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import accepts


def locate_binary(root, environ):
    """(path, None) for the herald binary to start, or (None, why there is none).

    DEPLOYCHECK_BIN names it; otherwise the newer of release/herald and
    debug/herald under CARGO_TARGET_DIR (default ROOT/target). A relative
    CARGO_TARGET_DIR is taken from the current directory, as cargo does."""
    named = environ.get("DEPLOYCHECK_BIN")
    if named:
        return Path(named).absolute(), None
    target = Path(environ.get("CARGO_TARGET_DIR") or Path(root, "target")).absolute()
    found = [p for p in (target / "release/herald", target / "debug/herald") if os.access(p, os.X_OK)]
    if not found:
        return None, f"no herald binary in {target}/release or {target}/debug (build it, or set DEPLOYCHECK_BIN)"
    return max(found, key=lambda p: p.stat().st_mtime), None


@dataclass
class Context:
    kube: str
    out: Path
    binary: Path | None
    no_binary: str | None  # why binary is None

    @cached_property
    def doc_keys(self):
        return accepts.doc_keys()

    @cached_property
    def env(self):
        """(known HERALD_* names, their source)."""
        return accepts.env_names(self.binary)
