"""Runs the checker on a copy of the deployment files: the intact copy
passes; deleting alerts.yml, the dashboard or a chart template fails naming
the file; a Redis TLS file the env names but no volume mounts stops the
started binary; a missing herald binary is a skip that fails the run unless
allowed; CARGO_TARGET_DIR is where the binary is looked for."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from deploycheck.chart import CASES
from deploycheck.context import locate_binary

SCRIPTS = Path(__file__).resolve().parents[2]
REPO = SCRIPTS.parent
# What the checker reads.
PARTS = ["helm", "deploy", "docs/configuration.md", ".yamllint"]
# The binary the real run would start (DEPLOYCHECK_BIN or the build under CARGO_TARGET_DIR).
BINARY, NO_BINARY = locate_binary(REPO, os.environ)
POD_CHECKS = len(CASES)  # one binary start per values case


class CheckerTest(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp(prefix="deploycheck-"))
        self.addCleanup(shutil.rmtree, self.root)
        for part in PARTS:
            src, dst = REPO / part, self.root / part
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)

    def run_checker(self, *args, env=None):
        base = {k: v for k, v in os.environ.items() if k not in ("DEPLOYCHECK_BIN", "CARGO_TARGET_DIR")}
        base["PYTHONPATH"] = str(SCRIPTS)
        if BINARY is not None:
            base["DEPLOYCHECK_BIN"] = str(BINARY)
        r = subprocess.run(
            [sys.executable, "-m", "deploycheck", "--root", str(self.root), *args],
            env=base | (env or {}),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return r.returncode, r.stdout + r.stderr

    def assert_fails_naming(self, rel):
        (self.root / rel).unlink()
        rc, out = self.run_checker()
        self.assertEqual(rc, 1, out)
        fails = [line for line in out.splitlines() if line.startswith("FAIL")]
        self.assertTrue(any(rel in line for line in fails), f"no FAIL line names {rel}:\n{out}")

    def test_intact_tree_passes(self):
        # Neither reaches the started binary: herald would refuse an unknown HERALD_* name.
        # Without a binary the pod checks skip; the real run decides whether that is allowed.
        args = [] if BINARY is not None else ["--allow-skip"]
        rc, out = self.run_checker(*args, env={"HERALD_LISTN": "0.0.0.0:1", "HERALD_BIN": "/nonexistent"})
        self.assertEqual(rc, 0, out)
        self.assertIn(" 0 failed", out)
        if BINARY is not None:
            self.assertIn(" 0 skipped", out)
            self.assertEqual(out.count("OK   herald starts with the pod's"), POD_CHECKS, out)

    def test_missing_alerts_fails(self):
        self.assert_fails_naming("deploy/prometheus/alerts.yml")

    def test_missing_dashboard_fails(self):
        self.assert_fails_naming("deploy/grafana/herald.json")

    def test_missing_chart_template_fails(self):
        self.assert_fails_naming("helm/herald/templates/servicemonitor.yaml")

    @unittest.skipIf(BINARY is None, NO_BINARY)
    def test_unmounted_redis_tls_file_stops_the_pod(self):
        deployment = self.root / "helm/herald/templates/deployment.yaml"
        text = deployment.read_text()
        self.assertIn("mountPath: /etc/herald/redis-tls\n", text)
        deployment.write_text(text.replace("mountPath: /etc/herald/redis-tls\n", "mountPath: /etc/herald/tls\n"))
        rc, out = self.run_checker()
        self.assertEqual(rc, 1, out)
        fails = [line for line in out.splitlines() if line.startswith("FAIL")]
        self.assertTrue(any("herald starts" in line and "[cluster-tls]" in line for line in fails), out)
        self.assertIn("/etc/herald/redis-tls/ca.crt", out)

    def test_missing_binary_is_skipped_not_passed(self):
        empty = self.root / "empty-target"
        empty.mkdir()
        env = {"CARGO_TARGET_DIR": str(empty)}
        rc, out = self.run_checker(env=env | {"DEPLOYCHECK_BIN": ""})
        self.assertEqual(rc, 1, out)
        self.assertEqual(out.count("SKIP herald starts with the pod's"), POD_CHECKS, out)
        self.assertIn(f", {POD_CHECKS} skipped", out)
        self.assertIn(str(empty), out)
        rc, out = self.run_checker("--allow-skip", env=env | {"DEPLOYCHECK_BIN": ""})
        self.assertEqual(rc, 0, out)

    @unittest.skipIf(BINARY is None, NO_BINARY)
    def test_cargo_target_dir_is_honoured(self):
        target = self.root / "elsewhere"
        (target / "debug").mkdir(parents=True)
        (target / "debug/herald").symlink_to(BINARY.absolute())
        rc, out = self.run_checker(env={"CARGO_TARGET_DIR": str(target), "DEPLOYCHECK_BIN": ""})
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count("OK   herald starts with the pod's"), POD_CHECKS, out)
        self.assertIn("elsewhere/debug/herald starts", out)


if __name__ == "__main__":
    unittest.main()
