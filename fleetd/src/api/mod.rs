//! The HTTP API, `/fleet/v1` and its `/v1-alpha` alias, served over a
//! [`RegistryClient`] as the original's `api/mux.go` is.
//!
//! The wire behaviour is the original's (fleet-reference.md §4): paths,
//! methods, objects, status codes, messages, page tokens and the discovery
//! document, with the bugs of §0 fixed (an invalid `desiredState` is a 400, a
//! missing unit state a 404, a template cannot be activated on creation
//! either, a refused PUT writes nothing).
//!
//! Layout:
//! - `routes.rs`: one handler per resource, each matching the method itself.
//! - `error.rs`: [`ApiError`], the one place where errors become statuses and
//!   the `{"error":{"code","message"}}` body.
//! - `page.rs`: [`PageToken`], the paging of every listing.
//! - `serve.rs`: [`Listener`]s (unix, TCP, socket activation) and [`serve`],
//!   the accept loops with graceful shutdown, and what one client may take
//!   ([`ServeOptions`]: header and body read timeouts, connections per
//!   listener).
//! - `testing.rs` (tests and feature `test-support` only): [`testing::TestServer`],
//!   the API on a temporary socket with a client, for fleetd's unit tests and
//!   the contract suite.
//! - `discovery.json`: the original's discovery document, unchanged, served at
//!   `/discovery`; `discovery-extensions.json`: what we serve beyond it
//!   (metadata `PATCH /machines`), served at `/discovery/extensions`.
//!
//! Around every route: the `Server: fleetd/<version>` header, a readiness
//! gate (503 until fleetd can talk to etcd), and a body size limit.
//! Unknown paths are a 404 with an empty message, `/` and the bare prefixes a
//! 405. `GET /healthz` answers `ok` once the gate is open. `GET /metrics`
//! (Prometheus text format, see [`crate::metrics`]) is outside the gate: it
//! answers before fleetd is registered too, with `fleet_ready 0`.
//!
//! Request bodies are decoded as the original's Go decoder did (field names
//! in any case, `null` as absent), except that a field the original's
//! objects do not have is refused with a 400 naming it, rather than silently
//! ignored: the original's clients only ever send known fields, and a typo
//! (`desiredstate` is fine, `desired_state` is not) must not pass as a
//! request that changes nothing.

mod error;
mod page;
mod routes;
mod serve;
mod snapshot;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::http::header::SERVER;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

pub use error::{ApiError, UNAVAILABLE};
pub use page::PageToken;
pub use routes::{BODY_LIMIT, DISCOVERY, DISCOVERY_EXTENSIONS, PREFIXES};
pub use serve::{
    BODY_READ_TIMEOUT, DRAIN_DEADLINE, HEADER_READ_TIMEOUT, Listener, MAX_CONNECTIONS,
    ServeOptions, bind_tcp, bind_unix, from_listen_fds, serve, serve_with, serve_with_deadline,
};

use crate::client::RegistryClient;
use crate::metrics::{ClusterReading, ClusterSource};
use crate::registry::Kv;

/// How the API is served.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Page size of every listing (`token_limit`, default 100); page tokens
    /// must carry it. 0 is taken as 1.
    pub token_limit: u16,
    /// `true` while fleetd can talk to etcd (its machine is registered).
    /// While it is `false`, every request is answered 503.
    pub ready: watch::Receiver<bool>,
}

/// The API's router over `client`: both prefixes, `/`, `/healthz`,
/// `/metrics` and the 404 fallback, with the server header and the body
/// limit around all of them, and the readiness gate around all but
/// `/metrics`.
pub fn router<K: Kv>(client: RegistryClient<K>, opts: ApiOptions) -> Router {
    router_with_cluster(client, opts, Arc::new(|| ClusterReading::Absent))
}

/// [`router`], with `/metrics` exporting the cluster gauges of `cluster`
/// (the engine's [`crate::engine::Engine::cluster_source`] in the daemon).
pub fn router_with_cluster<K: Kv>(
    client: RegistryClient<K>,
    opts: ApiOptions,
    cluster: ClusterSource,
) -> Router {
    let state = Arc::new(routes::AppState {
        client,
        token_limit: opts.token_limit.max(1),
        ready: opts.ready.clone(),
        units: snapshot::Slot::default(),
        states: snapshot::Slot::default(),
        machines: snapshot::Slot::default(),
        cluster,
    });
    let server = HeaderValue::from_str(&format!("fleetd/{}", crate::VERSION))
        .unwrap_or_else(|_| HeaderValue::from_static("fleetd"));
    let gated = routes::routes(state.clone())
        .layer(middleware::from_fn_with_state(opts.ready, readiness_gate));
    routes::open_routes(state)
        .merge(gated)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(server, server_info))
}

/// Answers 503 while fleetd is not ready.
async fn readiness_gate(
    State(ready): State<watch::Receiver<bool>>,
    req: Request,
    next: Next,
) -> Response {
    // Copy the flag out: the borrow must not be held across the await.
    let is_ready = *ready.borrow();
    if !is_ready {
        return ApiError::unavailable().into_response();
    }
    next.run(req).await
}

/// Logs the request and adds the `Server` header to every answer.
async fn server_info(State(server): State<HeaderValue>, req: Request, next: Next) -> Response {
    tracing::debug!(method = %req.method(), uri = %req.uri(), "API request");
    let mut res = next.run(req).await;
    res.headers_mut().insert(SERVER, server);
    res
}
