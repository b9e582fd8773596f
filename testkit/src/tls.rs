//! Certificates made at test time with the `openssl` CLI: a CA, a server
//! certificate for 127.0.0.1 and a client certificate, all signed by that CA,
//! in a temporary directory removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A CA with a server and a client certificate (P-256 keys, PEM files).
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A fresh CA (so two calls give CAs that do not trust each other's certificates).
    pub fn generate() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("tls temp dir");
        let f = |name: &str| dir.join(name);
        let files = Self {
            ca: f("ca.pem"),
            server_cert: f("server.pem"),
            server_key: f("server.key"),
            client_cert: f("client.pem"),
            client_key: f("client.key"),
            dir: dir.clone(),
        };
        let ca_key = f("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=herald test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path(&ca_key),
            "-out",
            path(&files.ca),
        ]);
        files.sign(
            &files.server_cert,
            &files.server_key,
            "127.0.0.1",
            "serverAuth",
            &ca_key,
        );
        files.sign(
            &files.client_cert,
            &files.client_key,
            "herald",
            "clientAuth",
            &ca_key,
        );
        files
    }

    /// A key and a certificate for `cn` (and IP 127.0.0.1) signed by the CA.
    fn sign(&self, cert: &Path, key: &Path, cn: &str, usage: &str, ca_key: &Path) {
        let csr = cert.with_extension("csr");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            path(key),
            "-out",
            path(&csr),
        ]);
        let ext = cert.with_extension("ext");
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1\n"
            ),
        )
        .expect("write ext");
        let serial = format!("0x{:016x}", fastrand::u64(1..));
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.ca),
            "-CAkey",
            path(ca_key),
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            path(&ext),
            "-out",
            path(cert),
        ]);
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl not found: install it to run the TLS tests");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
}
