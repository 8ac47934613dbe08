//! fleetd: the fleet daemon, and the pieces of it that fleetctl shares.
//!
//! Layout:
//! - [`schema`]: the `/fleet/v1` wire objects and the records kept in etcd.
//! - [`registry`]: the typed registry over etcd (or memory), its watched cache.
//! - [`client`]: the `FleetApi` trait with its HTTP and direct-registry clients.
//! - With feature `daemon` (default): [`config`], [`engine`], [`agent`],
//!   [`api`], [`metrics`] and [`daemon`], which wires them together.
//!
//! Each of these modules is a namespace: its own submodules are private to
//! the crate, and what other crates (fleetctl, the tests, the benches) may
//! use is re-exported at the module's root (`fleetd::registry::EtcdKv`,
//! `fleetd::client::HttpClient`, `fleetd::engine::Engine`). The one public
//! submodule is [`schema::request`], the request decoders the fuzz targets
//! drive. Helpers used only inside the daemon (`errors`, `pem`, `retry`)
//! are not public.

pub mod client;
#[cfg(feature = "daemon")]
mod errors;
mod pem;
pub mod registry;
mod retry;
pub mod schema;

#[cfg(feature = "daemon")]
pub mod agent;
#[cfg(feature = "daemon")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod engine;
#[cfg(feature = "daemon")]
pub mod metrics;

/// The version fleetd and fleetctl report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
