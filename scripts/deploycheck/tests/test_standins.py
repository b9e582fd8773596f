"""The stand-ins the pod check gives the herald binary: Redis URLs that keep
what herald checks but reach nowhere, a rediss:// URL for a Secret's URL when
the pod has Redis TLS files, and mounted Secret/ConfigMap files written as
local PEM (or JWKS) files that the pod's env then points at."""

import shutil
import tempfile
import unittest
from pathlib import Path

from deploycheck.herald import materialise, nowhere, pod_env

TLS_VOLUME = {
    "name": "redis-tls",
    "projected": {
        "sources": [
            {"secret": {"name": "redis-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}},
            {
                "secret": {
                    "name": "client",
                    "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
                }
            },
        ]
    },
}
JWT_VOLUME = {"name": "jwt", "configMap": {"name": "k", "items": [{"key": "j", "path": "jwks.json"}]}}
CONTAINER = {
    "env": [
        {"name": "HERALD_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "r", "key": "redis-url"}}},
        {"name": "HERALD_REDIS_TLS_CA_FILE", "value": "/etc/herald/redis-tls/ca.crt"},
        {"name": "HERALD_JWKS_FILE", "value": "/etc/herald/jwt/jwks.json"},
        {"name": "HERALD_LOG_FORMAT", "value": "json"},
    ],
    "volumeMounts": [
        {"name": "config", "mountPath": "/etc/herald/herald.toml", "subPath": "herald.toml"},
        {"name": "redis-tls", "mountPath": "/etc/herald/redis-tls"},
        {"name": "jwt", "mountPath": "/etc/herald/jwt"},
    ],
}
POD = {"volumes": [{"name": "config", "configMap": {"name": "herald"}}, TLS_VOLUME, JWT_VOLUME]}


class NowhereTest(unittest.TestCase):
    def test_keeps_scheme_user_master_and_db(self):
        cases = {
            "redis://r:6379": "redis://127.0.0.1:1",
            "rediss://u:p@r.example:6380/2": "rediss://u:p@127.0.0.1:1/2",
            "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/1": "redis+sentinel://:pw@127.0.0.1:1/mymaster/1",
            "rediss+cluster://h1:6379,h2:6379": "rediss+cluster://127.0.0.1:1",
            "redis+cluster://h1:6379/3": "redis+cluster://127.0.0.1:1/3",  # herald refuses the db, as it should
        }
        for url, want in cases.items():
            self.assertEqual(nowhere(url), want, url)

    def test_leaves_what_has_no_host(self):
        for url in ("redis+unix:///run/redis.sock", "not a url"):
            self.assertEqual(nowhere(url), url)


class PodEnvTest(unittest.TestCase):
    def test_secret_url_is_rediss_with_tls_files_and_files_are_local(self):
        env = pod_env(CONTAINER, "/tmp/x", {}, ["/etc/herald/redis-tls", "/etc/herald/jwt"])
        self.assertEqual(env["HERALD_REDIS_URL"], "rediss://127.0.0.1:1")
        self.assertEqual(env["HERALD_REDIS_TLS_CA_FILE"], "/tmp/x/etc/herald/redis-tls/ca.crt")
        self.assertEqual(env["HERALD_JWKS_FILE"], "/tmp/x/etc/herald/jwt/jwks.json")
        self.assertEqual(env["HERALD_LOG_FORMAT"], "json")

    def test_secret_url_is_plain_without_tls_files(self):
        c = {"env": CONTAINER["env"][:1]}
        self.assertEqual(pod_env(c, "/tmp/x", {})["HERALD_REDIS_URL"], "redis://127.0.0.1:1")

    def test_shards_keep_their_order_and_get_distinct_ports(self):
        c = {
            "env": [{"name": "HERALD_REDIS_SHARDS", "value": "redis://a:6379 redis+sentinel://s:26379/m rediss://c:1"}]
        }
        self.assertEqual(
            pod_env(c, "/tmp/x", {})["HERALD_REDIS_SHARDS"],
            "redis://127.0.0.1:1 redis+sentinel://127.0.0.1:2/m rediss://127.0.0.1:3",
        )
        c = {"env": [{"name": "HERALD_REDIS_SHARDS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
        self.assertEqual(pod_env(c, "/tmp/x", {})["HERALD_REDIS_SHARDS"], "redis://127.0.0.1:1 redis://127.0.0.1:2")
        c["env"].append(CONTAINER["env"][1])
        self.assertEqual(pod_env(c, "/tmp/x", {})["HERALD_REDIS_SHARDS"], "rediss://127.0.0.1:1 rediss://127.0.0.1:2")


@unittest.skipIf(shutil.which("openssl") is None, "no openssl")
class MaterialiseTest(unittest.TestCase):
    def test_mounted_secret_files_become_pem_files(self):
        with tempfile.TemporaryDirectory() as d:
            mounts = materialise(CONTAINER, POD, d)
            self.assertEqual(mounts, ["/etc/herald/redis-tls", "/etc/herald/jwt"])
            tls = Path(d, "etc/herald/redis-tls")
            self.assertEqual(sorted(p.name for p in tls.iterdir()), ["ca.crt", "tls.crt", "tls.key"])
            self.assertTrue((tls / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----"))
            self.assertIn("PRIVATE KEY-----", (tls / "tls.key").read_text())
            self.assertIn('"keys"', Path(d, "etc/herald/jwt/jwks.json").read_text())
            self.assertFalse(Path(d, "etc/herald/herald.toml").exists())  # subPath: written by the check itself

    def test_a_volume_without_items_is_refused(self):
        pod = {"volumes": [{"name": "redis-tls", "secret": {"secretName": "s"}}]}
        c = {"volumeMounts": [{"name": "redis-tls", "mountPath": "/etc/herald/redis-tls"}]}
        with tempfile.TemporaryDirectory() as d, self.assertRaisesRegex(AssertionError, "only Secret/ConfigMap items"):
            materialise(c, pod, d)


if __name__ == "__main__":
    unittest.main()
