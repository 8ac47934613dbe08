//! Clients of fleet: the [`FleetApi`] trait, as fleetctl sees the cluster.
//!
//! Two implementations, as in the original (`client.API`):
//! - [`HttpClient`] speaks `/fleet/v1` over a unix socket, TCP, or any byte
//!   stream (an SSH channel for `--tunnel`).
//! - [`RegistryClient`] works straight on the registry; the API server is
//!   built on it, and `fleetctl --driver=etcd` uses it.
//!
//! Layout: `http.rs` ([`HttpClient`]), `registry.rs` ([`RegistryClient`]).

pub(crate) mod http;
pub(crate) mod registry;

pub use http::{
    DEFAULT_ENDPOINT, HttpClient, Target, TlsOptions, endpoint_target, split_host_port,
};
pub use registry::RegistryClient;

use std::future::Future;

use crate::schema::{Machine, TargetState, Unit, UnitState};

/// Why fleet refused a request. The same refusal comes from both drivers:
/// [`RegistryClient`] returns it, the API server answers it with its status
/// (`api/error.rs`), and [`HttpClient`] reads it back from that status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The request is malformed or names an invalid thing (400).
    BadRequest,
    /// The thing does not exist (404).
    NotFound,
    /// The request contradicts what is stored (409).
    Conflict,
    /// fleet cannot reach its store right now (503).
    Unavailable,
    /// Another error status, as received over HTTP.
    Status(u16),
}

impl Refusal {
    /// The HTTP status of this refusal: the one table of refusals and
    /// statuses, read both ways.
    pub const fn status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::NotFound => 404,
            Refusal::Conflict => 409,
            Refusal::Unavailable => 503,
            Refusal::Status(code) => code,
        }
    }

    /// The refusal an HTTP status stands for.
    pub const fn from_status(code: u16) -> Self {
        match code {
            400 => Refusal::BadRequest,
            404 => Refusal::NotFound,
            409 => Refusal::Conflict,
            503 => Refusal::Unavailable,
            code => Refusal::Status(code),
        }
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// fleet refused the request.
    #[error("{message} (HTTP {})", refusal.status())]
    Refused {
        /// Why.
        refusal: Refusal,
        /// fleet's message (may be empty).
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
    /// A refusal with this message.
    pub fn refused(refusal: Refusal, message: impl Into<String>) -> Self {
        Error::Refused {
            refusal,
            message: message.into(),
        }
    }

    /// The refusal, for refused requests.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Error::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }

    /// The HTTP status of refused requests.
    pub fn status(&self) -> Option<u16> {
        self.refusal().map(Refusal::status)
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

    /// Every unit, as [`FleetApi::units`], if listing them takes at most
    /// `max_requests` requests; `None` when it would take more, or when the
    /// client cannot tell what a listing costs (the default). A caller about
    /// to look up many units one by one reads one listing instead when it
    /// is cheaper.
    fn units_within(
        &self,
        max_requests: usize,
    ) -> impl Future<Output = Result<Option<Vec<Unit>>>> + Send {
        let _ = max_requests;
        std::future::ready(Ok(None))
    }

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

    /// Delete a unit. a [`Refusal::NotFound`] when it does not exist.
    fn destroy_unit(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    /// The HTTP client reads back the refusal the API server answered with.
    #[test]
    fn refusals_round_trip_through_their_status() {
        for refusal in [
            Refusal::BadRequest,
            Refusal::NotFound,
            Refusal::Conflict,
            Refusal::Unavailable,
            Refusal::Status(415),
        ] {
            assert_eq!(Refusal::from_status(refusal.status()), refusal);
        }
    }
}
