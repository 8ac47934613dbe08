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
use serde::{Deserialize, Deserializer};

use super::error::{ApiError, json_response};
use super::page::PageToken;
use crate::client::registry::{PutOutcome, UNIT_NOT_FOUND, go_quote};
use crate::client::{FleetApi, RegistryClient};
use crate::registry::Kv;
use crate::schema::{MachineId, MachinePage, TargetState, UnitOption, UnitPage, UnitStatePage};

/// The two prefixes the API is served under.
pub const PREFIXES: [&str; 2] = ["/fleet/v1", "/v1-alpha"];

/// Largest request body accepted (PUT and PATCH bodies are small).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The discovery document, served as is.
pub const DISCOVERY: &str = include_str!("discovery.json");

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
}

/// Handlers' state.
type Shared<K> = State<Arc<AppState<K>>>;

/// Handler result.
type Answer = Result<Response, ApiError>;

/// Every route, with the fallback 404; middleware is added by the caller.
pub(super) fn routes<K: Kv>(state: Arc<AppState<K>>) -> Router {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .route(&format!("{prefix}/discovery"), any(discovery))
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

/// The request body, within [`BODY_LIMIT`] (413 beyond it).
async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            )
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
    if method != Method::GET {
        return Err(ApiError::bad_request(ONLY_HTTP_GET));
    }
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        DISCOVERY,
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

// ---------------------------------------------------------------------------
// /machines
// ---------------------------------------------------------------------------

/// `GET /machines` (a page of machines) and `PATCH /machines` (metadata).
async fn machines<K: Kv>(State(s): Shared<K>, req: Request) -> Answer {
    match *req.method() {
        Method::GET => {
            let token = PageToken::from_query(&query_pairs(req.uri()), s.token_limit)?;
            let (machines, next_page_token) = token.slice(s.client.machines().await?);
            let page = MachinePage {
                machines,
                next_page_token,
            };
            Ok(json_response(StatusCode::OK, &page))
        }
        Method::PATCH => patch_machines(&s, req).await,
        _ => Err(ApiError::method_not_allowed(ONLY_GET_PATCH)),
    }
}

/// One operation of a `PATCH /machines` body:
/// `{"op":"add","path":"/<machine>/metadata/<key>","value":{"value":"v"}}`.
///
/// Field names also match in the capitalisations Go's decoder accepted for
/// the original's untagged fields; unknown fields are ignored; `null` is the
/// same as absent.
#[derive(Debug, Deserialize)]
struct MetadataOp {
    /// `add`, `replace` or `remove`.
    #[serde(default, alias = "Op", alias = "OP")]
    op: Option<String>,
    /// `/<machineID>/metadata/<key>`.
    #[serde(default, alias = "Path", alias = "PATH")]
    path: Option<String>,
    /// The value, an object wrapping a string.
    #[serde(default, alias = "Value", alias = "VALUE")]
    value: Option<MetadataValue>,
}

/// The `value` object of a [`MetadataOp`].
#[derive(Debug, Deserialize)]
struct MetadataValue {
    /// The metadata value.
    #[serde(default, alias = "Value", alias = "VALUE")]
    value: Option<String>,
}

/// A validated metadata operation.
enum MetadataChange {
    /// `add` or `replace`: set the key.
    Set(MachineId, String, String),
    /// `remove`: remove the key.
    Remove(MachineId, String),
}

/// Splits `/<machine>/metadata/<key>` as the original's
/// `^/([^/]+)/metadata/([A-Za-z0-9_.-]+$)` did (the machine must also be a
/// valid machine ID, i.e. without whitespace).
fn parse_metadata_path(path: &str) -> Option<(MachineId, String)> {
    let rest = path.strip_prefix('/')?;
    let (machine, rest) = rest.split_once('/')?;
    let key = rest.strip_prefix("metadata/")?;
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !key_ok {
        return None;
    }
    Some((machine.parse().ok()?, key.to_owned()))
}

/// Checks one operation, in the original's order: op, path, value.
fn validate_op(op: MetadataOp) -> Result<MetadataChange, ApiError> {
    let kind = op.op.unwrap_or_default();
    if !matches!(kind.as_str(), "add" | "replace" | "remove") {
        return Err(ApiError::bad_request(
            "invalid op: expect add, remove, or replace",
        ));
    }
    let Some((machine, key)) = op.path.as_deref().and_then(parse_metadata_path) else {
        return Err(ApiError::bad_request("machine metadata path invalid"));
    };
    if kind == "remove" {
        return Ok(MetadataChange::Remove(machine, key));
    }
    match op.value.and_then(|v| v.value).filter(|v| !v.is_empty()) {
        Some(value) => Ok(MetadataChange::Set(machine, key, value)),
        None => Err(ApiError::bad_request(
            "invalid value: add and replace require a value",
        )),
    }
}

/// `PATCH /machines`: every operation is validated, then all are applied in
/// order; 204 with `Content-Type: application/json` and no body.
async fn patch_machines<K: Kv>(s: &AppState<K>, req: Request) -> Answer {
    let body = read_body(req).await?;
    let ops: Vec<MetadataOp> =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let changes = ops
        .into_iter()
        .map(validate_op)
        .collect::<Result<Vec<_>, _>>()?;
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
    let (units, next_page_token) = token.slice(s.client.units().await?);
    Ok(json_response(
        StatusCode::OK,
        &UnitPage {
            next_page_token,
            units,
        },
    ))
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
            Some(unit) => Ok(json_response(StatusCode::OK, &unit)),
            None => Err(ApiError::new(StatusCode::NOT_FOUND, UNIT_NOT_FOUND)),
        },
        Method::DELETE => {
            s.client.destroy_unit(&name).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::PUT => put_unit(&s, &name, req).await,
        _ => Err(ApiError::method_not_allowed(ONLY_GET_PUT_DELETE)),
    }
}

/// The body of `PUT /units/<name>`. Like the original's Go decoder, unknown
/// fields (`currentState`, `machineID`) are ignored, `null` is the same as
/// absent, and the capitalised field names match too.
#[derive(Debug, Deserialize)]
struct PutBody {
    /// The unit name; empty means the one in the URL.
    #[serde(default, alias = "Name")]
    name: Option<String>,
    /// The desired state; empty means none. Anything but the three states is
    /// refused (the original stored it and broke the unit).
    #[serde(
        default,
        rename = "desiredState",
        alias = "DesiredState",
        deserialize_with = "desired_state"
    )]
    desired_state: Option<TargetState>,
    /// The unit's content.
    #[serde(default, alias = "Options")]
    options: Option<Vec<PutOption>>,
}

/// One option in a [`PutBody`].
#[derive(Debug, Deserialize)]
struct PutOption {
    /// Option name.
    #[serde(default, alias = "Name")]
    name: Option<String>,
    /// Section name.
    #[serde(default, alias = "Section")]
    section: Option<String>,
    /// Option value.
    #[serde(default, alias = "Value")]
    value: Option<String>,
}

impl From<PutOption> for UnitOption {
    fn from(o: PutOption) -> Self {
        UnitOption {
            name: o.name.unwrap_or_default(),
            section: o.section.unwrap_or_default(),
            value: o.value.unwrap_or_default(),
        }
    }
}

/// `desiredState`: absent, `null` or `""` is none; otherwise one of the
/// three states.
fn desired_state<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TargetState>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// The original's Content-Type check: exactly one header, whose media type
/// (before any `;` parameter) is `application/json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let values: Vec<_> = headers.get_all(CONTENT_TYPE).iter().collect();
    let [value] = values.as_slice() else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected 1 Content-Type, got {}", values.len()),
        ));
    };
    let media = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if media != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
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
    let body: PutBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    let name = body
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| url_name.to_owned());
    if name != url_name {
        return Err(ApiError::bad_request(format!(
            "name in URL {} differs from unit name in request body {}",
            go_quote(url_name),
            go_quote(&name)
        )));
    }
    let options = body
        .options
        .unwrap_or_default()
        .into_iter()
        .map(UnitOption::from)
        .collect();
    match s
        .client
        .put_unit(&name, body.desired_state, options)
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
    let all = s
        .client
        .unit_states_matching(
            first_param(&params, "unitName"),
            first_param(&params, "machineID"),
        )
        .await?;
    let (states, next_page_token) = token.slice(all);
    Ok(json_response(
        StatusCode::OK,
        &UnitStatePage {
            next_page_token,
            states,
        },
    ))
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
        Some(state) => Ok(json_response(StatusCode::OK, &state)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, STATE_NOT_FOUND)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_paths() {
        let (m, k) = parse_metadata_path("/abc/metadata/role.x-1_y").unwrap();
        assert_eq!((m.as_str(), k.as_str()), ("abc", "role.x-1_y"));
        for bad in [
            "abc/metadata/k",
            "/abc/metadata/",
            "/abc/metadata/a/b",
            "//metadata/k",
            "/abc/meta/k",
            "/abc/metadata/k!",
            "/a b/metadata/k",
        ] {
            assert!(parse_metadata_path(bad).is_none(), "{bad}");
        }
    }

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
