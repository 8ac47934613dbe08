//! Choosing and building the client from the global flags.
//!
//! Only the API driver exists for now: `--driver=etcd` (or the deprecated
//! `--experimental-api=false`, which meant the same) and `--tunnel` are
//! refused with a clear message instead of being ignored.

use std::time::Duration;

use anyhow::anyhow;
use fleetd::client::HttpClient;

use crate::cli::GlobalArgs;
use crate::ui::Ui;

/// A request timeout of 0 means no limit; a year is as good.
const NO_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The HTTP client the flags ask for. With several comma-separated
/// endpoints only the first is used, with a warning, as in the original.
///
/// # Errors
///
/// An unknown or not yet supported driver, `--tunnel`, or an unusable
/// endpoint.
pub fn http_client(global: &GlobalArgs, ui: &mut Ui) -> anyhow::Result<HttpClient> {
    let etcd = !global.experimental_api || global.driver.eq_ignore_ascii_case("etcd");
    if etcd {
        return Err(anyhow!(
            "the etcd driver is not supported yet; use --driver=API with the fleet API endpoint"
        ));
    }
    if !global.driver.eq_ignore_ascii_case("API") {
        return Err(anyhow!(
            "unrecognized driver {}",
            crate::render::go_quote(&global.driver)
        ));
    }
    if !global.tunnel.is_empty() {
        return Err(anyhow!("--tunnel is not supported yet"));
    }
    let mut endpoints = global.endpoint.split(',');
    let first = endpoints.next().unwrap_or_default().trim();
    if endpoints.next().is_some() {
        ui.warn(format!(
            "WARNING: multiple endpoints provided but only the first ({first}) is used"
        ));
    }
    let timeout = if global.request_timeout > 0.0 {
        Duration::try_from_secs_f64(global.request_timeout).unwrap_or(NO_LIMIT)
    } else {
        NO_LIMIT
    };
    Ok(HttpClient::new(first, timeout)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::ui::testing::capture;
    use clap::Parser;

    fn client(args: &[&str]) -> (anyhow::Result<HttpClient>, String) {
        let cli = Cli::try_parse_from(
            std::iter::once("fleetctl")
                .chain(args.iter().copied())
                .chain(["list-units"]),
        )
        .unwrap();
        let (mut ui, _, err) = capture();
        (http_client(&cli.global, &mut ui), err.text())
    }

    #[test]
    fn drivers() {
        assert!(client(&[]).0.is_ok());
        assert!(client(&["--driver=api"]).0.is_ok());
        let err = client(&["--driver=etcd"]).0.unwrap_err();
        assert!(
            err.to_string().contains("etcd driver is not supported yet"),
            "{err}"
        );
        let err = client(&["--experimental-api=false"]).0.unwrap_err();
        assert!(err.to_string().contains("etcd driver"), "{err}");
        let err = client(&["--driver=zookeeper"]).0.unwrap_err();
        assert_eq!(err.to_string(), r#"unrecognized driver "zookeeper""#);
        let err = client(&["--tunnel=bastion"]).0.unwrap_err();
        assert!(err.to_string().contains("--tunnel"), "{err}");
    }

    #[test]
    fn endpoints() {
        let (c, warn) = client(&["--endpoint=http://a:1,http://b:2"]);
        assert_eq!(c.unwrap().endpoint(), "http://a:1");
        assert!(
            warn.contains("only the first (http://a:1) is used"),
            "{warn}"
        );
        let err = client(&["--endpoint=unix://var/run/fleet.sock"])
            .0
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(r#"unable to connect to host "var" with scheme "unix""#),
            "{err:#}"
        );
        assert!(client(&["--endpoint=https://a:1"]).0.is_err());
        assert!(client(&["--request-timeout=0"]).0.is_ok());
    }
}
