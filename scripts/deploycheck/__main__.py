"""Runs every check and prints one OK / FAIL / SKIP line each, then the counts.

    python -m deploycheck [--root DIR] [--allow-skip]

Exit status 1 when a check failed, or when one was skipped (a check that
could not run, e.g. no herald binary to start) unless --allow-skip is given.
Environment: DEPLOYCHECK_BIN (the herald binary to start; default the newer of
release/herald and debug/herald under CARGO_TARGET_DIR, or ROOT/target),
KUBE_VERSION (default 1.30.0).
"""

import argparse
import os
import sys
from pathlib import Path

import helm_python as helm
import yaml

from . import chart, compose, files, herald, kube, static
from .context import Context, locate_binary
from .runner import Runner


def main(argv=None):
    ap = argparse.ArgumentParser(prog="deploycheck", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=".", help="repository root to check (default: the current directory)")
    ap.add_argument("--allow-skip", action="store_true", help="checks that cannot run do not fail the run")
    args = ap.parse_args(argv)

    binary, no_binary = locate_binary(args.root, os.environ)  # before chdir: CARGO_TARGET_DIR may be relative
    os.chdir(args.root)
    if binary is not None and not os.path.relpath(binary).startswith(".."):
        binary = Path(os.path.relpath(binary))  # shorter in the output
    ctx = Context(os.environ.get("KUBE_VERSION", "1.30.0"), Path("target/deploy-check"), binary, no_binary)
    run = Runner()

    print("==> files")
    run.check("chart and deploy files present", files.present)

    print(f"==> chart {files.CHART} (Helm SDK {helm.helm_sdk_version()}, Kubernetes {ctx.kube})")
    ctx.out.mkdir(parents=True, exist_ok=True)
    used, rendered_cases = set(), []
    for label, case in chart.CASES.items():
        try:
            values = chart.values_of(case)
        except Exception as e:
            run.report(f"values [{label}]", "FAIL", str(e))
            continue
        run.check(f"helm lint --strict [{label}]", chart.lint, ctx, values)
        try:
            docs, rendered = chart.render(values)
        except Exception as e:
            run.report(f"render [{label}]", "FAIL", str(e))
            continue
        used |= rendered
        rendered_cases.append(label)
        (ctx.out / f"{label}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        run.check(f"kubernetes-validate [{label}]", kube.validate, ctx, docs)
        run.check(f"references [{label}]", kube.cross_refs, docs)
        run.check(f"herald.toml and env names [{label}]", herald.config_matches, ctx, docs, label)
        run.check(f"herald starts with the pod's args, env and config [{label}]", herald.pod_starts, ctx, docs, label)
    run.check("every template renders in some case", chart.templates_render, used, rendered_cases)
    run.check("values.schema.json config keys are documented", chart.schema_matches_docs, ctx)
    for name, values, error, expect in chart.REJECTS:
        run.check(name, chart.must_fail, values, error, expect)

    print("==> deploy/")
    run.check("yamllint -s (helm/, deploy/)", static.yamllint)
    run.check("docker-compose.yml and its configs", compose.compose, ctx)
    run.check("haproxy -c deploy/haproxy/haproxy.cfg", compose.haproxy_cfg)
    run.check("promtool check config", compose.promtool)
    run.check("deploy/docker/Dockerfile", static.dockerfile)
    run.check("deploy/local/cluster.sh syntax", static.cluster_sh)

    print(f"check-deploy: {run.summary()}")
    if run.failed:
        return 1
    if run.skipped and not args.allow_skip:
        print("check-deploy: skipped checks fail the run (--allow-skip accepts them)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
