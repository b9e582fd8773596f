"""Files checked on their own: yamllint over helm/ and deploy/, the
Dockerfile (static text checks; no Docker daemon) and the syntax of
deploy/local/cluster.sh."""

import subprocess
import sys

from .runner import must, read_text


def yamllint():
    cmd = [sys.executable, "-m", "yamllint", "-c", ".yamllint"]
    r = subprocess.run([*cmd, "-s", "helm", "deploy"], capture_output=True, text=True)
    must(r.returncode == 0, r.stdout + r.stderr)
    n = len(subprocess.run([*cmd, "--list-files", "helm", "deploy"], capture_output=True, text=True).stdout.split())
    return f"{n} files"


def dockerfile():
    t = read_text("deploy/docker/Dockerfile")
    for want in (
        "FROM rust:1-bookworm AS build",
        "cargo build --release --locked -p herald",
        "FROM debian:bookworm-slim",
        "USER 10001:10001",
        "EXPOSE 8080 9090",
        'ENTRYPOINT ["herald"]',
    ):
        must(want in t, f"Dockerfile lacks {want!r}")
    return "static checks only (no Docker daemon)"


def cluster_sh():
    read_text("deploy/local/cluster.sh")
    r = subprocess.run(["bash", "-n", "deploy/local/cluster.sh"], capture_output=True, text=True)
    must(r.returncode == 0, r.stderr)
    return "bash -n"
