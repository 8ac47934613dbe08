//! `EtcdKv` against a real etcd with TLS (client certificates made at test
//! time with the `openssl` CLI) and with authentication, and a polling
//! [`Reflector`] (fleet's `disable_watches`) against a real etcd, and
//! `EtcdKv::connect_through` (etcd over streams the caller opens).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetd::registry::{self, CancellationToken, Reflector};
use fleetd::registry::{ConnectError, EtcdConnectOptions};
use fleetd::registry::{EtcdKv, Kv, Op, Txn};
use testbed::etcd::{Etcd, EtcdTls};
use testbed::util::{require_tool, wait_until};
use tokio::net::TcpStream;

/// The bound on every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Generous deadline for anything to converge.
const CONVERGE: Duration = Duration::from_secs(30);

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in a
/// temporary directory.
struct Pki {
    /// Holds the files; removed on drop.
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Make the CA and sign a server and a client certificate with it.
    fn generate() -> anyhow::Result<Pki> {
        require_tool("openssl")?;
        let dir = tempfile::Builder::new().prefix("tb-pki.").tempdir()?;
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            d,
            &[
                &["req", "-x509", "-nodes", "-days", "2"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-subj",
                    "/CN=tb-etcd-ca",
                ],
            ],
        )?;
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "root", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), ext)?;
            let subj = format!("/CN={cn}");
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            let extfile = format!("{name}.ext");
            openssl(
                d,
                &[
                    &["req", "-nodes"],
                    &ec[..],
                    &["-keyout", &key, "-out", &csr, "-subj", &subj],
                ],
            )?;
            openssl(
                d,
                &[&[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &extfile,
                ]],
            )?;
        }
        Ok(Pki { dir })
    }

    fn server(&self) -> EtcdTls {
        EtcdTls {
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            trusted_ca_file: self.path("ca.pem"),
        }
    }

    fn client_options(&self) -> EtcdConnectOptions {
        EtcdConnectOptions {
            ca_file: Some(self.path("ca.pem")),
            cert_file: Some(self.path("client.pem")),
            key_file: Some(self.path("client.key")),
            ..EtcdConnectOptions::new(REQUEST_TIMEOUT)
        }
    }
}

/// Run `openssl` in `dir` with the concatenated argument groups.
fn openssl(dir: &Path, args: &[&[&str]]) -> anyhow::Result<()> {
    let args: Vec<&str> = args.concat();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!(
            "`openssl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Write `key` and read it back through `kv`.
async fn round_trip(kv: &EtcdKv, key: &str) -> anyhow::Result<()> {
    kv.txn(Txn {
        success: vec![Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease: None,
        }],
        ..Txn::default()
    })
    .await?;
    let (found, _) = kv.get(key).await?;
    let found = found.with_context(|| format!("{key} is missing after a put"))?;
    assert_eq!(found.value, b"v");
    Ok(())
}

/// Run `etcdctl` against `endpoint` with extra arguments.
fn etcdctl(endpoint: &str, args: &[&str]) -> anyhow::Result<String> {
    let bin = require_tool("etcdctl")?;
    let out = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .context("cannot run etcdctl")?;
    if !out.status.success() {
        bail!(
            "`etcdctl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn tls_with_ca_and_client_certificate() -> anyhow::Result<()> {
    let pki = Pki::generate()?;
    let etcd = Etcd::start_tls(pki.server()).await?;
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // The CA and the client certificate: works.
    let kv = EtcdKv::connect_with(std::slice::from_ref(&endpoint), &pki.client_options()).await?;
    round_trip(&kv, "/tls/a").await?;

    // No TLS options at all: the server cannot be verified.
    let plain = EtcdKv::connect_with(
        std::slice::from_ref(&endpoint),
        &EtcdConnectOptions::new(REQUEST_TIMEOUT),
    )
    .await;
    let error = match plain {
        Ok(kv) => round_trip(&kv, "/tls/b").await.err(),
        Err(e) => Some(e.into()),
    }
    .context("etcd over TLS answered a client without a CA")?;
    println!("without a CA: {error:#}");
    let text = format!("{error:#}");
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer"),
        "the error says what is wrong with TLS: {text}"
    );

    // The CA but no client certificate: etcd requires one.
    let no_cert = EtcdConnectOptions {
        ca_file: Some(pki.path("ca.pem")),
        ..EtcdConnectOptions::new(REQUEST_TIMEOUT)
    };
    let error = match EtcdKv::connect_with(std::slice::from_ref(&endpoint), &no_cert).await {
        Ok(kv) => round_trip(&kv, "/tls/c").await.err(),
        Err(e) => Some(e.into()),
    }
    .context("etcd with --client-cert-auth answered a client without a certificate")?;
    println!("without a client certificate: {error:#}");
    // (With TLS 1.3 the client learns of the refusal after its side of the
    // handshake: the error is either etcd's "BadCertificate" alert or a
    // closed connection, so only the failure itself is asserted.)

    // An unreadable CA file is named in the error, before any connection.
    let missing = EtcdConnectOptions {
        ca_file: Some(pki.path("nope.pem")),
        ..pki.client_options()
    };
    let error = EtcdKv::connect_with(std::slice::from_ref(&endpoint), &missing)
        .await
        .err()
        .context("a missing CA file was accepted")?;
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("nope.pem"), "{error}");

    // A certificate without its key is refused.
    let half = EtcdConnectOptions {
        key_file: None,
        ..pki.client_options()
    };
    let error = EtcdKv::connect_with(std::slice::from_ref(&endpoint), &half)
        .await
        .err()
        .context("a certificate without a key was accepted")?;
    assert!(matches!(error, ConnectError::Options(_)), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn authentication_with_user_and_password() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let endpoint = etcd.endpoint();
    etcdctl(&endpoint, &["user", "add", "root:s3cret"])?;
    etcdctl(&endpoint, &["user", "grant-role", "root", "root"])?;
    etcdctl(&endpoint, &["auth", "enable"])?;
    let endpoints = std::slice::from_ref(&endpoint);

    let options = EtcdConnectOptions {
        username: Some("root".into()),
        password: Some("s3cret".into()),
        ..EtcdConnectOptions::new(REQUEST_TIMEOUT)
    };
    let kv = EtcdKv::connect_with(endpoints, &options).await?;
    round_trip(&kv, "/auth/a").await?;

    // No credentials: etcd refuses the request.
    let anonymous = EtcdKv::connect(endpoints, REQUEST_TIMEOUT).await?;
    let error = round_trip(&anonymous, "/auth/b")
        .await
        .err()
        .context("etcd with auth enabled answered an anonymous client")?;
    println!("without credentials: {error:#}");
    assert!(
        format!("{error:#}").contains("user name"),
        "the error says credentials are missing: {error:#}"
    );

    // A wrong password fails when connecting.
    let wrong = EtcdConnectOptions {
        password: Some("wrong".into()),
        ..options.clone()
    };
    let error = EtcdKv::connect_with(endpoints, &wrong)
        .await
        .err()
        .context("a wrong password was accepted")?;
    println!("with a wrong password: {error:#}");
    assert!(
        format!("{error:#}").contains("authentication failed")
            || format!("{:?}", error).contains("authentication failed"),
        "the error says authentication failed: {error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn polling_reflector_follows_real_etcd() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let kv = EtcdKv::connect(&[etcd.endpoint()], REQUEST_TIMEOUT).await?;
    let (reflector, store) = Reflector::new(kv.clone(), "/poll/", registry::json_record::<String>);
    let reflector = reflector.polling(Duration::from_millis(200));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(reflector.run(cancel.clone()));

    let put = |key: &'static str, value: &'static str| {
        let kv = kv.clone();
        async move {
            kv.txn(Txn {
                success: vec![Op::Put {
                    key: key.into(),
                    value: serde_json::to_vec(value)?,
                    lease: None,
                }],
                ..Txn::default()
            })
            .await?;
            anyhow::Ok(())
        }
    };
    let contents = || {
        let store = store.clone();
        async move {
            Ok(store
                .snapshot()
                .iter()
                .map(|(k, v)| (k.clone(), (**v).clone()))
                .collect::<Vec<_>>())
        }
    };

    put("/poll/a", "1").await?;
    put("/poll/b", "2").await?;
    wait_until(
        "the polled cache to show a and b",
        CONVERGE,
        contents,
        |c| c.len() == 2,
    )
    .await?;
    put("/poll/a", "3").await?;
    kv.txn(Txn {
        success: vec![Op::Delete {
            key: "/poll/b".into(),
        }],
        ..Txn::default()
    })
    .await?;
    wait_until(
        "the polled cache to follow an update and a delete",
        CONVERGE,
        contents,
        |c| c == &[("/poll/a".to_owned(), "3".to_owned())],
    )
    .await?;
    cancel.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn fleetctl_etcd_driver_over_tls() -> anyhow::Result<()> {
    let fleetctl = testbed::cluster::built_binary("fleetctl")?;
    let pki = Pki::generate()?;
    let etcd = Etcd::start_tls(pki.server()).await?;
    let run = |tls: Vec<String>| {
        let (fleetctl, endpoint) = (fleetctl.clone(), etcd.endpoint());
        async move {
            tokio::process::Command::new(fleetctl)
                .args(["--driver=etcd", "--request-timeout=5"])
                .arg(format!("--endpoint={endpoint}"))
                .args(tls)
                .arg("list-machines")
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .context("cannot run fleetctl")
        }
    };
    let file = |name: &str| pki.path(name).display().to_string();

    let out = run(vec![
        format!("--ca-file={}", file("ca.pem")),
        format!("--cert-file={}", file("client.pem")),
        format!("--key-file={}", file("client.key")),
    ])
    .await?;
    assert!(
        out.status.success(),
        "fleetctl --driver=etcd with --ca-file/--cert-file/--key-file: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The deprecated spellings work the same.
    let out = run(vec![
        format!("--etcd-cafile={}", file("ca.pem")),
        format!("--etcd-certfile={}", file("client.pem")),
        format!("--etcd-keyfile={}", file("client.key")),
    ])
    .await?;
    assert!(
        out.status.success(),
        "fleetctl --driver=etcd with --etcd-cafile/--etcd-certfile/--etcd-keyfile: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without a client certificate etcd refuses.
    let out = run(vec![format!("--ca-file={}", file("ca.pem"))]).await?;
    println!(
        "fleetctl without a client certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "etcd answered fleetctl without a client certificate"
    );
    Ok(())
}

/// A stream being opened by [`recording_dialer`]'s dialer.
type Dialling = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

/// The `host:port`s a dialer was asked for.
type Dialled = Arc<Mutex<Vec<String>>>;

/// A dialer for [`EtcdKv::connect_through`] that opens plain TCP and
/// records every `host:port` it was asked for.
fn recording_dialer() -> (
    Dialled,
    impl Fn(String, u16) -> Dialling + Clone + Send + Sync + 'static,
) {
    let seen = Dialled::default();
    let log = seen.clone();
    let dial = move |host: String, port: u16| -> Dialling {
        lock(&log).push(format!("{host}:{port}"));
        Box::pin(async move { TcpStream::connect((host.as_str(), port)).await })
    };
    (seen, dial)
}

fn lock(seen: &Dialled) -> std::sync::MutexGuard<'_, Vec<String>> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `connect_through` (fleetctl's `--tunnel` with the etcd driver): every
/// connection is a stream the caller opens, TLS runs inside it, and with
/// several endpoints a dead one is passed over.
#[tokio::test]
async fn etcd_through_a_callers_streams() -> anyhow::Result<()> {
    let pki = Pki::generate()?;
    let etcd = Etcd::start_tls(pki.server()).await?;
    let endpoint = etcd.endpoint();
    let (seen, dial) = recording_dialer();
    let kv = EtcdKv::connect_through(
        std::slice::from_ref(&endpoint),
        &pki.client_options(),
        dial.clone(),
    )
    .await?;
    round_trip(&kv, "/through/tls").await?;
    let port = endpoint.rsplit(':').next().unwrap_or_default().to_owned();
    let dialled = lock(&seen).clone();
    assert!(
        !dialled.is_empty() && dialled.iter().all(|d| *d == format!("127.0.0.1:{port}")),
        "{dialled:?}"
    );

    // TLS files with an http:// endpoint are refused, as by connect_with.
    let error = EtcdKv::connect_through(
        &["http://127.0.0.1:2379".to_owned()],
        &pki.client_options(),
        dial.clone(),
    )
    .await
    .err()
    .context("TLS files with an http:// endpoint were accepted")?;
    assert!(matches!(error, ConnectError::Options(_)), "{error:?}");

    // Plain etcd, a dead endpoint first: requests get through.
    let plain = Etcd::start().await?;
    let (seen, dial) = recording_dialer();
    let endpoints = ["http://127.0.0.1:1".to_owned(), plain.endpoint()];
    let kv = EtcdKv::connect_through(&endpoints, &EtcdConnectOptions::new(REQUEST_TIMEOUT), dial)
        .await?;
    for i in 0..4 {
        round_trip(&kv, &format!("/through/plain/{i}")).await?;
    }
    let dialled = lock(&seen).clone();
    assert!(dialled.iter().any(|d| d == "127.0.0.1:1"), "{dialled:?}");
    Ok(())
}
