//! Clients of fleet: the [`FleetApi`] trait, as fleetctl sees the cluster.
//!
//! Two implementations, as in the original (`client.API`):
//! - [`HttpClient`] speaks `/fleet/v1` over a unix socket, TCP, or any byte
//!   stream (an SSH channel for `--tunnel`).
//! - [`RegistryClient`] works straight on the registry; the API server is
//!   built on it, and `fleetctl --driver=etcd` uses it.
//!
//! Layout: `http.rs` ([`HttpClient`]), `registry.rs` ([`RegistryClient`]).

pub mod http;
pub mod registry;

pub use http::HttpClient;
pub use registry::RegistryClient;

use std::future::Future;

use crate::schema::{Machine, TargetState, Unit, UnitState};

/// Client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status.
    #[error("{message} (HTTP {code})")]
    Api {
        /// HTTP status code.
        code: u16,
        /// The server's message (may be empty).
        message: String,
    },
    /// The request could not be sent or the answer not received.
    #[error("cannot reach fleet at {endpoint}")]
    Transport {
        /// The endpoint tried.
        endpoint: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from fleet: {0}")]
    Protocol(String),
    /// Direct-registry access failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
}

impl Error {
    /// The HTTP status for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Client result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What fleetctl can ask of fleet.
pub trait FleetApi: Send + Sync {
    /// Every live machine, sorted by ID, with merged metadata.
    fn machines(&self) -> impl Future<Output = Result<Vec<Machine>>> + Send;

    /// One unit, or `None` if it does not exist.
    fn unit(&self, name: &str) -> impl Future<Output = Result<Option<Unit>>> + Send;

    /// Every unit, sorted by name.
    fn units(&self) -> impl Future<Output = Result<Vec<Unit>>> + Send;

    /// Every unit state, sorted by (name, machine).
    fn unit_states(&self) -> impl Future<Output = Result<Vec<UnitState>>> + Send;

    /// The state of one unit (first machine found), or `None`.
    fn unit_state(&self, name: &str) -> impl Future<Output = Result<Option<UnitState>>> + Send;

    /// Create (or replace the content of) a unit. `unit.options` must be
    /// non-empty; `unit.desired_state` defaults to inactive.
    fn create_unit(&self, unit: &Unit) -> impl Future<Output = Result<()>> + Send;

    /// Set the desired state of an existing unit.
    fn set_unit_target_state(
        &self,
        name: &str,
        state: TargetState,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Delete a unit. `Err(Api{code: 404})`-like `NotFound` when it does not exist.
    fn destroy_unit(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}
