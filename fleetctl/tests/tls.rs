//! Runs the built `fleetctl` against `https://` test servers: a CA, server
//! and client certificates made at test time (rcgen), a rustls server on
//! 127.0.0.1 answering `GET /fleet/v1/machines` with one machine.
//!
//! Checks: the right `--ca-file` works; a wrong CA fails naming the endpoint
//! and the certificate problem; an unreadable CA file is named; a server
//! that requires a client certificate accepts `--cert-file`/`--key-file`
//! (spelt `--etcd-*` too) and refuses a client without one; the
//! `FLEETCTL_*` variables of all those flags work as the flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto::ring};

/// The machine the test server lists.
const MACHINE: &str = "4f1d2c3b4a5968778695a4b3c2d1e0f9";

/// The answer to every request.
const MACHINES: &str =
    r#"{"machines":[{"id":"4f1d2c3b4a5968778695a4b3c2d1e0f9","primaryIP":"10.9.8.7"}]}"#;

/// The files of one test PKI, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA that signed the server and client certificates.
    ca: CertificateDer<'static>,
    /// The server's certificate and key.
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, flag: &str, name: &str) -> String {
        format!("--{flag}={}", self.path(name).display())
    }
}

/// A CA certificate with its issuer.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

/// Makes `ca.pem` (trusted), `other-ca.pem` (unrelated), `client.pem` and
/// `client-key.pem`, and the server's certificate for 127.0.0.1.
fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = ca("fleetctl test CA");
    let other = ca_pem_only("unrelated CA");
    let leaf = |san: Vec<String>, purpose: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(san).expect("leaf params");
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &ca).expect("leaf cert");
        (cert, key)
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["fleetctl-client".to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, text: String| {
        std::fs::write(dir.path().join(name), text).expect("write PEM");
    };
    write("ca.pem", ca.pem());
    write("other-ca.pem", other);
    write("client.pem", client_cert.pem());
    write("client-key.pem", client_key.serialize_pem());
    Pki {
        ca: ca.der().clone(),
        server: (
            server_cert.der().clone(),
            PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        ),
        dir,
    }
}

fn ca_pem_only(name: &str) -> String {
    ca(name).pem()
}

/// Serves [`MACHINES`] over TLS on 127.0.0.1 until the test's runtime ends,
/// requiring a client certificate signed by the CA when `client_auth`.
/// Returns the endpoint.
async fn serve(pki: &Pki, client_auth: bool) -> String {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = if client_auth {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.clone()).expect("add CA");
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .expect("server cert");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Handshake failures are the client's to report.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{MACHINES}",
                    MACHINES.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    format!("https://127.0.0.1:{}", addr.port())
}

/// What one run of fleetctl printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `fleetctl --endpoint <endpoint> <args> list-machines --full` with no
/// FLEETCTL_* variables inherited.
async fn list_machines(dir: &Path, endpoint: &str, args: &[&str]) -> Run {
    list_machines_env(dir, endpoint, &[], args).await
}

/// As [`list_machines`], with the variables `env` set.
async fn list_machines_env(
    dir: &Path,
    endpoint: &str,
    env: &[(&str, PathBuf)],
    args: &[&str],
) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.current_dir(dir)
        .arg(format!("--endpoint={endpoint}"))
        .arg("--request-timeout=20")
        .args(args)
        .args(["list-machines", "--full"])
        .env("RUST_LOG", "off");
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("fleetctl finished within 60s")
        .expect("fleetctl ran");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn https_checks_the_server_against_the_ca_file() {
    let pki = pki();
    let endpoint = serve(&pki, false).await;

    let run = list_machines(pki.dir.path(), &endpoint, &[&pki.arg("ca-file", "ca.pem")]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(MACHINE), "{run:?}");
    assert!(run.stdout.contains("10.9.8.7"), "{run:?}");

    let run = list_machines(
        pki.dir.path(),
        &endpoint,
        &[&pki.arg("ca-file", "other-ca.pem")],
    )
    .await;
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains(&endpoint), "{run:?}");
    assert!(
        run.stderr
            .contains("invalid peer certificate: UnknownIssuer"),
        "{run:?}"
    );

    let run = list_machines(
        pki.dir.path(),
        &endpoint,
        &[&pki.arg("ca-file", "nope.pem")],
    )
    .await;
    assert_ne!(run.code, Some(0), "{run:?}");
    let missing = format!("cannot read CA file {}", pki.path("nope.pem").display());
    assert!(run.stderr.contains(&missing), "{run:?}");

    // A key without a certificate is refused before any connection.
    let run = list_machines(
        pki.dir.path(),
        &endpoint,
        &[
            &pki.arg("ca-file", "ca.pem"),
            &pki.arg("key-file", "client-key.pem"),
        ],
    )
    .await;
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains("both a cert file and a key file"),
        "{run:?}"
    );
}

#[tokio::test]
async fn https_presents_the_client_certificate() {
    let pki = pki();
    let endpoint = serve(&pki, true).await;

    let run = list_machines(
        pki.dir.path(),
        &endpoint,
        &[
            &pki.arg("ca-file", "ca.pem"),
            &pki.arg("cert-file", "client.pem"),
            &pki.arg("key-file", "client-key.pem"),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(MACHINE), "{run:?}");

    // The deprecated spellings mean the same.
    let run = list_machines(
        pki.dir.path(),
        &endpoint,
        &[
            &pki.arg("etcd-cafile", "ca.pem"),
            &pki.arg("etcd-certfile", "client.pem"),
            &pki.arg("etcd-keyfile", "client-key.pem"),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(MACHINE), "{run:?}");

    // Without a client certificate the server ends the conversation.
    let run = list_machines(pki.dir.path(), &endpoint, &[&pki.arg("ca-file", "ca.pem")]).await;
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains(&endpoint), "{run:?}");
    assert!(!run.stdout.contains(MACHINE), "{run:?}");
}

#[tokio::test]
async fn tls_files_from_the_environment() {
    let pki = pki();
    let endpoint = serve(&pki, true).await;
    let d = pki.dir.path();
    // Each spelling's variables, as the original derived them from its
    // flags (`--etcd-cafile` → FLEETCTL_ETCD_CAFILE).
    for [ca, cert, key] in [
        [
            "FLEETCTL_CA_FILE",
            "FLEETCTL_CERT_FILE",
            "FLEETCTL_KEY_FILE",
        ],
        [
            "FLEETCTL_ETCD_CAFILE",
            "FLEETCTL_ETCD_CERTFILE",
            "FLEETCTL_ETCD_KEYFILE",
        ],
    ] {
        let env = [
            (ca, pki.path("ca.pem")),
            (cert, pki.path("client.pem")),
            (key, pki.path("client-key.pem")),
        ];
        let run = list_machines_env(d, &endpoint, &env, &[]).await;
        assert_eq!(run.code, Some(0), "{ca}: {run:?}");
        assert!(run.stdout.contains(MACHINE), "{ca}: {run:?}");
    }
    // The flag beats the variable.
    let env = [
        ("FLEETCTL_ETCD_CAFILE", pki.path("ca.pem")),
        ("FLEETCTL_ETCD_CERTFILE", pki.path("client.pem")),
        ("FLEETCTL_ETCD_KEYFILE", pki.path("client-key.pem")),
    ];
    let run = list_machines_env(d, &endpoint, &env, &[&pki.arg("ca-file", "other-ca.pem")]).await;
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("UnknownIssuer"), "{run:?}");
}
