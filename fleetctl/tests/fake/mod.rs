//! A small in-memory fleet API for driving the built `fleetctl`.
//!
//! It implements just enough of `/fleet/v1` (fleet-reference.md §4) to
//! check fleetctl's requests and outputs: units with the PUT algorithm of
//! §4.4 (Content-Type check, create, replace, desired-state changes,
//! templates), DELETE, unit states, machines, and paging with tokens that
//! need URL-encoding. An instantaneous "agent" makes every unit reach its
//! desired state at once, except:
//! - units named `stuck*` stay inactive, for timeouts;
//! - units named `failing*` launch but systemd reports them failed;
//! - units named `slowdelete*` stay visible for three GETs after DELETE;
//! - units named `lazy*` reach a new desired state only [`LAZY`] after it
//!   was set (inactive, without a state or machine, until then).
//!
//! [`Server::stall_next_listing`] makes the next listing answer late, as a
//! loaded server would. [`Server::hold_requests`] makes every request take
//! a while, and the fake counts the requests in flight at once and the
//! connections they came on (TCP only), so tests can check how fleetctl
//! spreads its requests.
//!
//! Machines: [`M1`] (10.0.0.1, metadata) runs every scheduled unit; [`M2`]
//! (no IP) only runs global units.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fleetd::schema::{
    ErrorBody, ErrorDetail, Machine, Page, PageItem, TargetState, Unit, UnitOption, UnitState,
};
use units::{Requirements, UnitFile, UnitName};

/// The machine every non-global unit is scheduled to.
pub const M1: &str = "113f16a7f1b94a4b9c7c2d1e0f3a4b5c";
/// A second machine, without a public IP.
pub const M2: &str = "2aa3c0d8e4f5a6b7c8d9e0f1a2b3c4d5";

/// Page size of every listing: small, so paging is exercised.
const PAGE: usize = 2;

/// How long a `lazy*` unit takes to reach its desired state.
pub const LAZY: Duration = Duration::from_millis(1200);

/// One unit in the registry.
#[derive(Clone, Debug)]
struct Record {
    options: Vec<UnitOption>,
    desired: TargetState,
    /// When the desired state was last set.
    since: Instant,
}

impl Record {
    fn new(options: Vec<UnitOption>, desired: TargetState) -> Record {
        Record {
            options,
            desired,
            since: Instant::now(),
        }
    }

    /// Whether the instantaneous agent has not got to this unit yet.
    fn lagging(&self, name: &str) -> bool {
        name.starts_with("stuck") || (name.starts_with("lazy") && self.since.elapsed() < LAZY)
    }
}

/// The registry and a log of requests.
#[derive(Default)]
pub struct Fake {
    units: BTreeMap<String, Record>,
    /// Destroyed `slowdelete*` units and how many more GETs still see them.
    ghosts: HashMap<String, (Record, u32)>,
    /// `METHOD path?query` of every request, in order.
    pub requests: Vec<String>,
    /// How long the next listing waits before it answers.
    stall: Option<Duration>,
    /// How long every request waits before it is handled.
    hold: Option<Duration>,
    /// Requests being handled now.
    in_flight: usize,
    /// The most requests handled at once so far.
    pub max_in_flight: usize,
    /// The client addresses requests came from (TCP only): one per
    /// connection.
    pub peers: HashSet<SocketAddr>,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(state: &Shared) -> MutexGuard<'_, Fake> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn file_of(options: &[UnitOption]) -> UnitFile {
    UnitFile::from_options(options.iter().cloned().map(Into::into).collect())
}

fn is_global(name: &str, options: &[UnitOption]) -> bool {
    name.parse::<UnitName>()
        .is_ok_and(|n| Requirements::extract(&n, &file_of(options)).global)
}

/// Where the instantaneous agent has taken a unit: current state and
/// machine.
fn current(name: &str, rec: &Record) -> (TargetState, &'static str) {
    if rec.lagging(name) {
        return (TargetState::Inactive, "");
    }
    match rec.desired {
        TargetState::Inactive => (TargetState::Inactive, ""),
        TargetState::Loaded => (TargetState::Loaded, M1),
        TargetState::Launched => (TargetState::Launched, M1),
    }
}

fn unit_json(name: &str, rec: &Record, listing: bool) -> Unit {
    let (state, machine) = current(name, rec);
    let global = is_global(name, &rec.options);
    Unit {
        // Global units have no current state or machine, except that the
        // listing shows them inactive (as the original did).
        current_state: match (global, listing) {
            (true, true) => Some(TargetState::Inactive),
            (true, false) => None,
            (false, _) => Some(state),
        },
        desired_state: Some(rec.desired),
        machine_id: if global {
            String::new()
        } else {
            machine.to_owned()
        },
        name: name.to_owned(),
        options: rec.options.clone(),
    }
}

fn states_of(name: &str, rec: &Record) -> Vec<UnitState> {
    if rec.lagging(name) || rec.desired == TargetState::Inactive {
        return Vec::new();
    }
    let machines: &[&str] = if is_global(name, &rec.options) {
        &[M1, M2]
    } else {
        &[M1]
    };
    let (active, sub) = match rec.desired {
        TargetState::Launched if name.starts_with("failing") => ("failed", "failed"),
        TargetState::Launched => ("active", "running"),
        _ => ("inactive", "dead"),
    };
    machines
        .iter()
        .map(|m| UnitState {
            hash: file_of(&rec.options).hash().to_string(),
            machine_id: (*m).to_owned(),
            name: name.to_owned(),
            systemd_active_state: active.to_owned(),
            systemd_load_state: "loaded".to_owned(),
            systemd_sub_state: sub.to_owned(),
        })
        .collect()
}

fn machines() -> Vec<Machine> {
    vec![
        Machine {
            id: M1.to_owned(),
            metadata: BTreeMap::from([
                ("role".to_owned(), "web".to_owned()),
                ("region".to_owned(), "us-east".to_owned()),
            ]),
            primary_ip: "10.0.0.1".to_owned(),
        },
        Machine {
            id: M2.to_owned(),
            metadata: BTreeMap::new(),
            primary_ip: String::new(),
        },
    ]
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_u16(),
            message: message.into(),
        },
    };
    (code, Json(body)).into_response()
}

/// Answers with the page of `items` a token asks for, or a 400 for a bad
/// token.
fn page_answer<T>(items: &[T], query: &HashMap<String, String>) -> Response
where
    T: Clone + PageItem + serde::Serialize,
{
    match page(items, query) {
        Some(page) => Json(Page::from(page)).into_response(),
        None => error(StatusCode::BAD_REQUEST, "invalid page token"),
    }
}

/// Cuts `items` into the page a token asks for: tokens are `p<N>==`, which
/// only survive the trip if the client URL-encodes them. `None` for a bad
/// token.
fn page<T: Clone>(
    items: &[T],
    query: &HashMap<String, String>,
) -> Option<(Vec<T>, Option<String>)> {
    let index = match query.get("nextPageToken") {
        None => 0,
        Some(t) => t
            .strip_prefix('p')
            .and_then(|t| t.strip_suffix("=="))
            .and_then(|n| n.parse::<usize>().ok())?,
    };
    let start = index * PAGE;
    let slice: Vec<T> = items.iter().skip(start).take(PAGE).cloned().collect();
    // A token whenever the page is full, as the original.
    let next = (slice.len() == PAGE).then(|| format!("p{}==", index + 1));
    Some((slice, next))
}

/// Waits as long as [`Server::stall_next_listing`] asked, once.
async fn stall(state: &Shared) {
    let delay = lock(state).stall.take();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
}

fn log(state: &Shared, method: &Method, path: &str, raw: Option<&str>) {
    let line = match raw {
        Some(q) => format!("{method} {path}?{q}"),
        None => format!("{method} {path}"),
    };
    lock(state).requests.push(line);
}

/// Logs a request for `/fleet/v1/<collection>/<name>`.
fn log_item(state: &Shared, method: &Method, collection: &str, name: &str, raw: Option<&str>) {
    log(
        state,
        method,
        &format!("/fleet/v1/{collection}/{name}"),
        raw,
    );
}

async fn list_units(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    log(&s, &Method::GET, "/fleet/v1/units", raw.as_deref());
    stall(&s).await;
    let all: Vec<Unit> = lock(&s)
        .units
        .iter()
        .map(|(n, r)| unit_json(n, r, true))
        .collect();
    page_answer(&all, &q)
}

async fn get_unit(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    log_item(&s, &Method::GET, "units", &name, raw.as_deref());
    let mut fake = lock(&s);
    if let Some(rec) = fake.units.get(&name) {
        return Json(unit_json(&name, rec, false)).into_response();
    }
    if let Some((rec, left)) = fake.ghosts.get_mut(&name)
        && *left > 0
    {
        *left -= 1;
        let unit = unit_json(&name, rec, false);
        return Json(unit).into_response();
    }
    error(StatusCode::NOT_FOUND, "unit does not exist")
}

async fn put_unit(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: String,
) -> Response {
    log_item(&s, &Method::PUT, "units", &name, raw.as_deref());
    let json = headers
        .get_all("content-type")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json")
        });
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only acceptable Content-Type is application/json",
        );
    }
    let unit: Unit = match serde_json::from_str(&body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unable to decode body: {e}"),
            );
        }
    };
    if !unit.name.is_empty() && unit.name != name {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "name in URL {name:?} differs from unit name in request body {:?}",
                unit.name
            ),
        );
    }
    let Ok(unit_name) = name.parse::<UnitName>() else {
        return error(StatusCode::BAD_REQUEST, "invalid unit name");
    };
    let mut fake = lock(&s);
    let existing = fake.units.get(&name).cloned();
    let new_content = !unit.options.is_empty()
        && existing
            .as_ref()
            .is_none_or(|e| file_of(&e.options).hash() != file_of(&unit.options).hash());
    if existing.is_none() && unit.options.is_empty() {
        return error(
            StatusCode::CONFLICT,
            "unit does not exist and options field empty",
        );
    }
    if new_content {
        if let Err(e) = units::validate_options(&unit_name, &file_of(&unit.options)) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        fake.units.insert(
            name,
            Record::new(
                unit.options,
                unit.desired_state.unwrap_or(TargetState::Inactive),
            ),
        );
        return StatusCode::CREATED.into_response();
    }
    let Some(desired) = unit.desired_state else {
        return error(
            StatusCode::CONFLICT,
            "must provide DesiredState to update existing unit",
        );
    };
    if unit_name.is_template() && desired != TargetState::Inactive {
        return error(
            StatusCode::BAD_REQUEST,
            format!("cannot activate template {name:?}"),
        );
    }
    if let Some(rec) = fake.units.get_mut(&name)
        && rec.desired != desired
    {
        *rec = Record::new(rec.options.clone(), desired);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_unit(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    log_item(&s, &Method::DELETE, "units", &name, raw.as_deref());
    let mut fake = lock(&s);
    match fake.units.remove(&name) {
        Some(rec) => {
            if name.starts_with("slowdelete") {
                fake.ghosts.insert(name, (rec, 3));
            }
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "unit does not exist"),
    }
}

async fn list_states(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    log(&s, &Method::GET, "/fleet/v1/state", raw.as_deref());
    stall(&s).await;
    let all: Vec<UnitState> = lock(&s)
        .units
        .iter()
        .flat_map(|(n, r)| states_of(n, r))
        .collect();
    page_answer(&all, &q)
}

async fn get_state(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    log_item(&s, &Method::GET, "state", &name, raw.as_deref());
    let fake = lock(&s);
    match fake
        .units
        .get(&name)
        .and_then(|r| states_of(&name, r).into_iter().next())
    {
        Some(state) => Json(state).into_response(),
        None => error(StatusCode::NOT_FOUND, "unit state does not exist"),
    }
}

async fn list_machines(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    log(&s, &Method::GET, "/fleet/v1/machines", raw.as_deref());
    stall(&s).await;
    page_answer(&machines(), &q)
}

/// Around every request: counts it in flight (and its connection), holds
/// it as [`Server::hold_requests`] asked, then handles it.
async fn gauge(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let hold = {
        let mut fake = lock(&s);
        fake.in_flight += 1;
        fake.max_in_flight = fake.max_in_flight.max(fake.in_flight);
        if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
            fake.peers.insert(*peer);
        }
        fake.hold
    };
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    let resp = next.run(req).await;
    lock(&s).in_flight -= 1;
    resp
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/fleet/v1/units", get(list_units))
        .route(
            "/fleet/v1/units/{name}",
            get(get_unit).put(put_unit).delete(delete_unit),
        )
        .route("/fleet/v1/state", get(list_states))
        .route("/fleet/v1/state/{name}", get(get_state))
        .route("/fleet/v1/machines", get(list_machines))
        .layer(middleware::from_fn_with_state(state.clone(), gauge))
        .with_state(state)
}

/// A running fake API.
pub struct Server {
    /// The endpoint to give fleetctl.
    pub endpoint: String,
    /// The registry, for inspection.
    pub state: Shared,
    /// Holds the socket's directory, if any, for the server's lifetime.
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Serves on a unix socket in a fresh temporary directory.
    pub async fn unix() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("fleet.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind unix socket");
        let state = Shared::default();
        let app = router(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            endpoint: format!("unix://{}", path.display()),
            state,
            _dir: Some(dir),
        }
    }

    /// Serves on TCP 127.0.0.1 with a free port.
    pub async fn tcp() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp");
        let addr = listener.local_addr().expect("local addr");
        let state = Shared::default();
        let app = router(state.clone());
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            endpoint: format!("http://{addr}"),
            state,
            _dir: None,
        }
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// Makes the next listing (units, states or machines) answer only
    /// after `delay`.
    pub fn stall_next_listing(&self, delay: Duration) {
        lock(&self.state).stall = Some(delay);
    }

    /// Makes every request from now on wait `hold` before it is handled,
    /// as a busy server would.
    pub fn hold_requests(&self, hold: Duration) {
        lock(&self.state).hold = Some(hold);
    }

    /// The most requests that were handled at once.
    pub fn max_in_flight(&self) -> usize {
        lock(&self.state).max_in_flight
    }

    /// How many connections the requests came on (TCP servers only).
    pub fn connections(&self) -> usize {
        lock(&self.state).peers.len()
    }

    /// The desired state of a unit, if it exists.
    pub fn desired(&self, name: &str) -> Option<TargetState> {
        lock(&self.state).units.get(name).map(|r| r.desired)
    }
}
