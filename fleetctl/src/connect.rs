//! Choosing and building the client from the global flags.
//!
//! - `--driver=API` (the default): [`HttpClient`] on the first endpoint;
//!   with `--tunnel`, over SSH channels to the bastion: for a unix endpoint
//!   each request runs `fleetctl fd-forward <socket>` there and speaks HTTP
//!   over its stdin/stdout, as the original did; for a TCP endpoint each
//!   request is a `direct-tcpip` channel.
//! - `--driver=etcd` (or the deprecated `--experimental-api=false`):
//!   [`RegistryClient`] over [`EtcdKv`] under `--etcd-key-prefix`, the same
//!   registry code fleetd runs. With `--tunnel` every connection to an
//!   etcd member is a `direct-tcpip` channel from the bastion to the
//!   endpoint's host and port, as in the original; TLS to an `https://`
//!   endpoint runs inside the channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use fleetd::client::{HttpClient, RegistryClient};
use fleetd::client::{Target, TlsOptions, endpoint_target};
use fleetd::registry::EtcdConnectOptions;
use fleetd::registry::{EtcdKv, Registry};

use crate::cli::{DEFAULT_ENDPOINT, GlobalArgs};
use crate::ssh::{self, Session, SshConfig};
use crate::ui::Ui;

/// A request timeout of 0 means no limit; a year is as good.
const NO_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the etcd driver goes when the endpoint was left at its (API)
/// default.
const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The client the flags ask for.
pub enum Client {
    /// The fleet API.
    Http(HttpClient),
    /// etcd, directly (boxed: the etcd client is large).
    Etcd(Box<RegistryClient<EtcdKv>>),
}

/// What `status`, `journal` and `ssh` need to reach machines: the SSH
/// settings and the tunnel's session, when there is one.
#[derive(Clone, Debug)]
pub struct Remote {
    /// User, timeout, host-key checking.
    pub ssh: SshConfig,
    /// The bastion (`--tunnel`), already connected.
    pub tunnel: Option<Arc<Session>>,
}

/// Expands a leading `~/` to `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The SSH settings of the global flags.
pub fn ssh_config(global: &GlobalArgs) -> SshConfig {
    SshConfig {
        user: global.ssh_username.clone(),
        timeout: seconds(global.ssh_timeout),
        known_hosts: global
            .strict_host_key_checking
            .then(|| expand_home(&global.known_hosts_file)),
        forward_agent: false,
    }
}

/// A duration of `s` seconds; 0 means no limit.
fn seconds(s: f64) -> Duration {
    if s > 0.0 {
        Duration::try_from_secs_f64(s).unwrap_or(NO_LIMIT)
    } else {
        NO_LIMIT
    }
}

/// Whether the flags select the etcd driver.
fn etcd_driver(global: &GlobalArgs) -> anyhow::Result<bool> {
    if global.driver.eq_ignore_ascii_case("etcd") || !global.experimental_api {
        return Ok(true);
    }
    if global.driver.eq_ignore_ascii_case("API") {
        return Ok(false);
    }
    Err(anyhow!(
        "unrecognized driver {}",
        units::go_quote(&global.driver)
    ))
}

/// Connects the tunnel, if `--tunnel` asks for one.
///
/// # Errors
///
/// A bad address, or the SSH connection failing.
pub async fn tunnel(global: &GlobalArgs) -> anyhow::Result<Option<Arc<Session>>> {
    if global.tunnel.is_empty() {
        return Ok(None);
    }
    let (host, port) = ssh::split_host_port(&global.tunnel, 22)?;
    let session = Session::connect(&ssh_config(global), &host, port)
        .await
        .with_context(|| format!("failed initializing SSH client to {}", global.tunnel))?;
    Ok(Some(Arc::new(session)))
}

/// The client the flags ask for, and the SSH context of the commands that
/// reach machines. With several comma-separated API endpoints only the
/// first is used, with a warning, as in the original.
///
/// # Errors
///
/// An unknown driver, an unusable endpoint, or the tunnel failing to
/// connect.
pub async fn client(global: &GlobalArgs, ui: &mut Ui) -> anyhow::Result<(Client, Remote)> {
    let etcd = etcd_driver(global)?;
    let tunnel = tunnel(global).await?;
    let remote = Remote {
        ssh: ssh_config(global),
        tunnel: tunnel.clone(),
    };
    if etcd {
        let client = etcd_client(global, tunnel).await?;
        return Ok((Client::Etcd(Box::new(client)), remote));
    }
    let mut endpoints = global.endpoint.split(',');
    let first = endpoints.next().unwrap_or_default().trim();
    if endpoints.next().is_some() {
        ui.warn(format!(
            "WARNING: multiple endpoints provided but only the first ({first}) is used"
        ));
    }
    let timeout = seconds(global.request_timeout);
    let http = match tunnel {
        None => HttpClient::with_tls(first, timeout, &api_tls(global))?,
        Some(session) => tunneled(first, session, global, timeout)?,
    };
    Ok((Client::Http(http), remote))
}

/// An [`HttpClient`] whose requests travel through `session`.
fn tunneled(
    endpoint: &str,
    session: Arc<Session>,
    global: &GlobalArgs,
    timeout: Duration,
) -> anyhow::Result<HttpClient> {
    let (remote_fleetctl, tls) = (&global.remote_fleetctl, api_tls(global));
    let client = match endpoint_target(endpoint)? {
        Target::Unix(path) => {
            let command = format!("{remote_fleetctl} fd-forward {path}");
            HttpClient::over_stream_with_tls(
                endpoint,
                move || {
                    let (session, command) = (session.clone(), command.clone());
                    async move { session.exec_stream(&command).await }
                },
                timeout,
                &tls,
            )?
        }
        Target::Tcp { host, port } => HttpClient::over_stream_with_tls(
            endpoint,
            move || {
                let (session, host) = (session.clone(), host.clone());
                async move { session.direct_tcpip(&host, port).await }
            },
            timeout,
            &tls,
        )?,
    };
    Ok(client)
}

/// The API driver's TLS settings: `--ca-file`, `--cert-file`, `--key-file`
/// (or their deprecated `--etcd-*` spellings), used only for `https://`
/// endpoints and ignored silently for the others, as in the original.
fn api_tls(global: &GlobalArgs) -> TlsOptions {
    let path = |s: &str| (!s.is_empty()).then(|| expand_home(s));
    TlsOptions {
        ca_file: path(&global.ca_file),
        cert_file: path(&global.cert_file),
        key_file: path(&global.key_file),
    }
}

/// The etcd driver's client, through `tunnel` if there is one.
async fn etcd_client(
    global: &GlobalArgs,
    tunnel: Option<Arc<Session>>,
) -> anyhow::Result<RegistryClient<EtcdKv>> {
    let endpoint = if global.endpoint == DEFAULT_ENDPOINT {
        DEFAULT_ETCD_ENDPOINT
    } else {
        global.endpoint.as_str()
    };
    let endpoints: Vec<String> = endpoint
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        bail!("no etcd endpoint given");
    }
    if endpoints
        .iter()
        .any(|e| e.starts_with("unix:") || e.starts_with("file:"))
    {
        bail!("the etcd driver needs http:// or https:// etcd endpoints, not {endpoint}");
    }
    let path = |p: &str| (!p.is_empty()).then(|| expand_home(p));
    let options = EtcdConnectOptions {
        ca_file: path(&global.ca_file),
        cert_file: path(&global.cert_file),
        key_file: path(&global.key_file),
        ..EtcdConnectOptions::new(seconds(global.request_timeout))
    };
    let kv = match tunnel {
        None => EtcdKv::connect_with(&endpoints, &options).await?,
        Some(session) => {
            let dial = move |host: String, port| {
                let session = session.clone();
                async move { session.direct_tcpip(&host, port).await }
            };
            EtcdKv::connect_through(&endpoints, &options, dial).await?
        }
    };
    Ok(RegistryClient::new(Registry::new(
        kv,
        &global.etcd_key_prefix,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::ui::testing::capture;
    use clap::Parser;

    fn client(args: &[&str]) -> (anyhow::Result<Client>, String) {
        let cli = Cli::try_parse_from(
            std::iter::once("fleetctl")
                .chain(args.iter().copied())
                .chain(["list-units"]),
        )
        .unwrap();
        let (mut ui, _, err) = capture();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(super::client(&cli.global, &mut ui));
        (result.map(|(c, _)| c), err.text())
    }

    fn endpoint(c: anyhow::Result<Client>) -> String {
        match c.unwrap() {
            Client::Http(h) => h.endpoint().to_owned(),
            Client::Etcd(_) => panic!("etcd client"),
        }
    }

    #[test]
    fn drivers() {
        assert!(client(&[]).0.is_ok());
        assert!(client(&["--driver=api"]).0.is_ok());
        // The etcd connection is lazy: the client is built without a server.
        assert!(matches!(
            client(&["--driver=etcd", "--endpoint=http://127.0.0.1:1"]).0,
            Ok(Client::Etcd(_))
        ));
        assert!(matches!(
            client(&["--experimental-api=false"]).0,
            Ok(Client::Etcd(_))
        ));
        let err = client(&["--driver=zookeeper"]).0.err().unwrap();
        assert_eq!(err.to_string(), r#"unrecognized driver "zookeeper""#);
        // --tunnel works with the etcd driver: the tunnel is dialled (and
        // here fails), not refused.
        let err = client(&["--driver=etcd", "--tunnel=127.0.0.1:1"])
            .0
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("failed initializing SSH client to 127.0.0.1:1"),
            "{err}"
        );
        let err = client(&["--driver=etcd", "--endpoint=unix:///x"])
            .0
            .err()
            .unwrap();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn endpoints() {
        let (c, warn) = client(&["--endpoint=http://a:1,http://b:2"]);
        assert_eq!(endpoint(c), "http://a:1");
        assert!(
            warn.contains("only the first (http://a:1) is used"),
            "{warn}"
        );
        let err = client(&["--endpoint=unix://var/run/fleet.sock"])
            .0
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains(r#"unable to connect to host "var" with scheme "unix""#),
            "{err:#}"
        );
        assert!(client(&["--endpoint=ftp://a:1"]).0.is_err());
        assert!(client(&["--endpoint=https://a:1"]).0.is_ok());
        // The TLS files are read for https only, and named when unreadable.
        assert!(
            client(&["--endpoint=http://a:1", "--ca-file=/nonexistent.pem"])
                .0
                .is_ok()
        );
        let err = client(&["--endpoint=https://a:1", "--ca-file=/nonexistent.pem"])
            .0
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("cannot read CA file /nonexistent.pem"),
            "{err:#}"
        );
        assert!(client(&["--request-timeout=0"]).0.is_ok());
    }

    #[test]
    fn ssh_settings() {
        let cli = Cli::try_parse_from([
            "fleetctl",
            "--ssh-username=root",
            "--ssh-timeout=2.5",
            "--known-hosts-file=/tmp/kh",
            "status",
            "x",
        ])
        .unwrap();
        let c = ssh_config(&cli.global);
        assert_eq!(c.user, "root");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.known_hosts, Some(PathBuf::from("/tmp/kh")));
        let cli = Cli::try_parse_from([
            "fleetctl",
            "--strict-host-key-checking=false",
            "status",
            "x",
        ])
        .unwrap();
        assert_eq!(ssh_config(&cli.global).known_hosts, None);
        assert!(expand_home("~/.fleetctl/known_hosts").ends_with(".fleetctl/known_hosts"));
        assert_eq!(expand_home("/a"), PathBuf::from("/a"));
    }
}
