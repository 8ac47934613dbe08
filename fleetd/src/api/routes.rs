//! The resources of `/fleet/v1` (and its `/v1-alpha` alias), one handler per
//! path, each matching the method itself so that unsupported methods get the
//! original's 405 (or, for the discovery document, 400) message.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::sync::watch;

use super::error::{ApiError, json_response};
use super::page::PageToken;
use super::snapshot::Slot;
use crate::client::registry::{PutOutcome, UNIT_NOT_FOUND};
use crate::client::{FleetApi, RegistryClient};
use crate::metrics::ClusterSource;
use crate::registry::Kv;
use crate::schema::request::{self, MetadataChange};
use crate::schema::{Machine, Page, Unit, UnitState};

/// The two prefixes the API is served under.
pub const PREFIXES: [&str; 2] = ["/fleet/v1", "/v1-alpha"];

/// Largest request body accepted (PUT and PATCH bodies are small).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The discovery document, served as is: the original's, unchanged, since
/// clients generate their bindings from it.
pub const DISCOVERY: &str = include_str!("discovery.json");

/// What we serve beyond [`DISCOVERY`] (the metadata `PATCH /machines`), as
/// a discovery document of its own at `/discovery/extensions`, so that the
/// original's document stays exactly as its clients know it.
pub const DISCOVERY_EXTENSIONS: &str = include_str!("discovery-extensions.json");

/// 404 body for `GET /state/<name>` when no machine reported the unit.
pub const STATE_NOT_FOUND: &str = "unit state does not exist";

const ONLY_GET: &str = "only GET supported against this resource";
const ONLY_HTTP_GET: &str = "only HTTP GET supported against this resource";
const ONLY_GET_PATCH: &str = "only GET and PATCH supported against this resource";
const ONLY_GET_PUT_DELETE: &str = "only GET, PUT and DELETE supported against this resource";

/// What every handler shares.
pub(super) struct AppState<K> {
    /// The API's view of the registry.
    pub client: RegistryClient<K>,
    /// Page size; page tokens must carry it.
    pub token_limit: u16,
    /// Whether fleetd is registered (for `/metrics`, which is served before
    /// that too).
    pub ready: watch::Receiver<bool>,
    /// The last listing of units, for the pages after the first.
    pub units: Slot<Unit>,
    /// The last listing of unit states, for the pages after the first.
    pub states: Slot<UnitState>,
    /// The last listing of machines, for the pages after the first.
    pub machines: Slot<Machine>,
    /// Where `/metrics` reads the cluster gauges.
    pub cluster: ClusterSource,
}

/// Handlers' state.
type Shared<K> = State<Arc<AppState<K>>>;

/// Handler result.
type Answer = Result<Response, ApiError>;

/// The routes served whether or not fleetd is ready: `/metrics`.
pub(super) fn open_routes<K: Kv>(state: Arc<AppState<K>>) -> Router {
    Router::new()
        .route("/metrics", any(metrics::<K>))
        .with_state(state)
}

/// Every other route, with the fallback 404; middleware is added by the
/// caller.
pub(super) fn routes<K: Kv>(state: Arc<AppState<K>>) -> Router {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .route(&format!("{prefix}/discovery"), any(discovery))
            .route(
                &format!("{prefix}/discovery/extensions"),
                any(discovery_extensions),
            )
            .route(&format!("{prefix}/machines"), any(machines::<K>))
            .route(&format!("{prefix}/units"), any(unit_list::<K>))
            .route(&format!("{prefix}/units/{{name}}"), any(unit_item::<K>))
            .route(&format!("{prefix}/state"), any(state_list::<K>))
            .route(&format!("{prefix}/state/{{name}}"), any(state_item::<K>))
            .route(prefix, any(|| async { ApiError::method_not_allowed("") }));
    }
    router
        .route("/", any(|| async { ApiError::method_not_allowed("") }))
        .route("/healthz", any(healthz))
        .fallback(|| async { ApiError::no_route() })
        .with_state(state)
}

/// The decoded query parameters, in order. Like Go's `URL.Query`, this never
/// fails: what does not decode is dropped.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// The first value of a query parameter, if it is there and not empty.
fn first_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// A 200 answer with this JSON body.
fn ok_json<T: serde::Serialize>(value: &T) -> Answer {
    Ok(json_response(StatusCode::OK, value))
}

/// The request body, within [`BODY_LIMIT`] (413 beyond it).
async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(format!("request body larger than {BODY_LIMIT} bytes"))
        } else {
            ApiError::bad_request(format!("unable to read body: {}", rejection.body_text()))
        }
    })
}

/// A path parameter, or 404 when it does not decode.
fn path_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    param.map(|Path(p)| p).map_err(|_| ApiError::no_route())
}

// ---------------------------------------------------------------------------
// /discovery, /healthz
// ---------------------------------------------------------------------------

/// `GET /discovery`: the discovery document. Other methods are a 400, as in
/// the original.
async fn discovery(method: Method) -> Answer {
    json_document(method, DISCOVERY)
}

/// `GET /discovery/extensions`: the discovery document of our additions,
/// answered as `/discovery` is.
async fn discovery_extensions(method: Method) -> Answer {
    json_document(method, DISCOVERY_EXTENSIONS)
}

/// A static JSON document for a GET; other methods are a 400.
fn json_document(method: Method, document: &'static str) -> Answer {
    if method != Method::GET {
        return Err(ApiError::bad_request(ONLY_HTTP_GET));
    }
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        document,
    )
        .into_response())
}

/// `GET /healthz`: 200 `ok` once fleetd can serve (the readiness gate in
/// front of every route answers 503 before that).
async fn healthz(method: Method) -> Answer {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(ONLY_GET));
    }
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok",
    )
        .into_response())
}

/// `GET /metrics`: fleetd's metrics in the Prometheus text format, then
/// `fleet_ready` and, while fleetd is ready, the cluster gauges this fleetd
/// has (the engine leader's, from its caches: nothing is read from etcd).
async fn metrics<K: Kv>(State(s): Shared<K>, method: Method) -> Answer {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(ONLY_GET));
    }
    let ready = *s.ready.borrow();
    let mut gauges = crate::metrics::Gauges::default();
    gauges.family(
        "fleet_ready",
        "Whether this fleetd is registered and serving the API (1) or not (0).",
        &[],
        [(Vec::new(), if ready { 1.0 } else { 0.0 })],
    );
    if ready {
        gauges.cluster((s.cluster)());
    }
    let text =
        crate::metrics::render(&crate::registry::invalid_value_counts()) + &gauges.into_text();
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

// ---------------------------------------------------------------------------
// /machines
// ---------------------------------------------------------------------------

/// `GET /machines` (a page of machines) and `PATCH /machines` (metadata).
async fn machines<K: Kv>(State(s): Shared<K>, req: Request) -> Answer {
    match *req.method() {
        Method::GET => {
            let token = PageToken::from_query(&query_pairs(req.uri()), s.token_limit)?;
            let all = s
                .machines
                .get("", token.page == 1, s.client.machines())
                .await?;
            ok_json(&Page::from(token.slice(&all)))
        }
        Method::PATCH => patch_machines(&s, req).await,
        _ => Err(ApiError::method_not_allowed(ONLY_GET_PATCH)),
    }
}

/// `PATCH /machines`: every operation is validated, then all are applied in
/// order; 204 with `Content-Type: application/json` and no body.
async fn patch_machines<K: Kv>(s: &AppState<K>, req: Request) -> Answer {
    let body = read_body(req).await?;
    let changes = request::decode_patch(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for change in changes {
        match change {
            MetadataChange::Set(machine, key, value) => {
                s.client
                    .set_machine_metadata(&machine, &key, &value)
                    .await?;
            }
            MetadataChange::Remove(machine, key) => {
                s.client.delete_machine_metadata(&machine, &key).await?;
            }
        }
    }
    Ok((StatusCode::NO_CONTENT, [(CONTENT_TYPE, "application/json")]).into_response())
}

// ---------------------------------------------------------------------------
// /units
// ---------------------------------------------------------------------------

/// `GET /units`: a page of units, sorted by name.
async fn unit_list<K: Kv>(State(s): Shared<K>, method: Method, uri: Uri) -> Answer {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(ONLY_GET));
    }
    let token = PageToken::from_query(&query_pairs(&uri), s.token_limit)?;
    let all = s.units.get("", token.page == 1, s.client.units()).await?;
    ok_json(&Page::from(token.slice(&all)))
}

/// `GET`, `PUT` and `DELETE /units/<name>`.
async fn unit_item<K: Kv>(
    State(s): Shared<K>,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Answer {
    let name = path_param(name)?;
    match *req.method() {
        Method::GET => match s.client.unit(&name).await? {
            Some(unit) => ok_json(&unit),
            None => Err(ApiError::not_found(UNIT_NOT_FOUND)),
        },
        Method::DELETE => {
            s.client.destroy_unit(&name).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::PUT => put_unit(&s, &name, req).await,
        _ => Err(ApiError::method_not_allowed(ONLY_GET_PUT_DELETE)),
    }
}

/// The original's Content-Type check: exactly one header, whose media type
/// (before any `;` parameter) is `application/json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let values: Vec<_> = headers.get_all(CONTENT_TYPE).iter().collect();
    let [value] = values.as_slice() else {
        return Err(ApiError::unsupported_media_type(format!(
            "expected 1 Content-Type, got {}",
            values.len()
        )));
    };
    let media = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if media != Some("application/json") {
        return Err(ApiError::unsupported_media_type(
            "only acceptable Content-Type is application/json",
        ));
    }
    Ok(())
}

/// `PUT /units/<name>` (fleet-reference.md §4.4): steps 1 to 3 here, the
/// rest in [`RegistryClient::put_unit`].
async fn put_unit<K: Kv>(s: &AppState<K>, url_name: &str, req: Request) -> Answer {
    check_content_type(req.headers())?;
    let body = read_body(req).await?;
    let put =
        request::decode_put(url_name, &body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    match s
        .client
        .put_unit(&put.name, put.desired_state, put.options)
        .await?
    {
        PutOutcome::Created => Ok(StatusCode::CREATED.into_response()),
        PutOutcome::Updated => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

// ---------------------------------------------------------------------------
// /state
// ---------------------------------------------------------------------------

/// `GET /state`: a page of unit states sorted by (unit, machine), filtered
/// by the first `machineID` and `unitName` parameters when not empty.
async fn state_list<K: Kv>(State(s): Shared<K>, method: Method, uri: Uri) -> Answer {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(ONLY_GET));
    }
    let params = query_pairs(&uri);
    let token = PageToken::from_query(&params, s.token_limit)?;
    let unit = first_param(&params, "unitName");
    let machine = first_param(&params, "machineID");
    let query = format!("{}\n{}", unit.unwrap_or(""), machine.unwrap_or(""));
    let all = s
        .states
        .get(
            &query,
            token.page == 1,
            s.client.unit_states_matching(unit, machine),
        )
        .await?;
    ok_json(&Page::from(token.slice(&all)))
}

/// `GET /state/<name>`: the state of a unit on the first machine (by ID)
/// that reports it; 404 when none does (the original crashed).
async fn state_item<K: Kv>(
    State(s): Shared<K>,
    method: Method,
    name: Result<Path<String>, PathRejection>,
) -> Answer {
    let name = path_param(name)?;
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(ONLY_GET));
    }
    match s.client.unit_state(&name).await? {
        Some(state) => ok_json(&state),
        None => Err(ApiError::not_found(STATE_NOT_FOUND)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert_eq!(
            check_content_type(&h).unwrap_err().message,
            "expected 1 Content-Type, got 0"
        );
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(check_content_type(&h).is_ok());
        h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            check_content_type(&h).unwrap_err().message,
            "only acceptable Content-Type is application/json"
        );
        h.append(CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(
            check_content_type(&h).unwrap_err().message,
            "expected 1 Content-Type, got 2"
        );
    }
}
