//! A stateful fake of Grafana's HTTP API (one organisation) for the Grafana reconciler's tests:
//! a real HTTP client talks to it on 127.0.0.1. It follows the documented API of Grafana 11
//! (`docs/sources/developers/http_api/*.md` in grafana/grafana): folders (nested, title unique
//! per parent, versions with `412 version-mismatch`), the legacy folder permission API
//! (`POST` replaces every item), dashboards (`POST /api/dashboards/db` with version and title
//! checks, get and delete by uid, `/api/search`), teams, data sources (secrets stored, never
//! returned: `secureJsonFields` only) and, in the Enterprise variant ([`FakeGrafana::start`]),
//! the RBAC data source permission API (`/api/access-control/datasources/...`), which the OSS
//! variant ([`FakeGrafana::start_oss`]) answers with 404 as Grafana OSS does. Every `/api`
//! call but `/api/health` needs `Authorization: Bearer <token>`. Ids increase per kind and are
//! never reused; versions increase on every update. Injected faults and a call log serve the
//! tests' assertions.
//!
//! Not modelled: users and service accounts (a permission naming a `userId` is refused with
//! 400), team members (`memberCount` is 0), dashboard versions history, library panels,
//! alert rules (`forceDeleteRules` is accepted and ignored), folder moves, pagination of
//! `/api/search`, the implicit `Admin` entry of a data source's permission list.
//! Names compare exactly (as on Grafana's default SQLite store); team search by `query` ignores
//! case. A team searched by an unknown `name` gets an empty list (200), as Grafana's handler
//! answers, although the docs also list 404.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The version `/api/health` reports.
pub const VERSION: &str = "11.3.0";

/// Folder permission levels of the legacy API.
pub const VIEW: u8 = 1;
pub const EDIT: u8 = 2;
pub const ADMIN: u8 = 4;

/// A folder and its permission items (the implicit `Admin` role is not among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub id: u64,
    pub uid: String,
    pub title: String,
    pub parent_uid: Option<String>,
    pub version: u64,
    pub permissions: Vec<FolderPermission>,
}

/// One item of a folder's permission list: exactly one of `role` and `team_id` is set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FolderPermission {
    pub role: Option<String>,
    pub team_id: Option<u64>,
    /// [`VIEW`], [`EDIT`] or [`ADMIN`].
    pub permission: u8,
}

impl FolderPermission {
    pub fn role(role: &str, permission: u8) -> FolderPermission {
        FolderPermission {
            role: Some(role.to_owned()),
            team_id: None,
            permission,
        }
    }

    pub fn team(team_id: u64, permission: u8) -> FolderPermission {
        FolderPermission {
            role: None,
            team_id: Some(team_id),
            permission,
        }
    }
}

/// A stored dashboard: its JSON as Grafana stores it (with `id`, `uid` and `version`).
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    pub id: u64,
    pub uid: String,
    pub title: String,
    /// `None` in the root ("General").
    pub folder_uid: Option<String>,
    pub version: u64,
    pub json: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: u64,
    pub name: String,
    pub email: String,
}

/// A stored data source: `settings` is what a GET returns (no secrets), `secure_json_data`
/// the secrets (`password`) as they were sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Datasource {
    pub id: u64,
    pub uid: String,
    pub name: String,
    pub version: u64,
    pub settings: Value,
    pub secure_json_data: BTreeMap<String, String>,
    pub permissions: Vec<DatasourcePermission>,
}

/// One entry of a data source's RBAC permissions: exactly one of `team_id` and
/// `built_in_role` is set; `permission` is `Query`, `Edit` or `Admin`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DatasourcePermission {
    pub team_id: Option<u64>,
    pub built_in_role: Option<String>,
    pub permission: String,
}

/// One served request, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

pub use crate::fault::Fault;

/// An error answer: Grafana's `{"message": ...}` body, plus `status` for 412s.
#[derive(Debug)]
struct ApiError {
    code: u16,
    body: Value,
}

fn err(code: u16, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        body: json!({ "message": message.into() }),
    }
}

fn precondition(message: &str, status: &str) -> ApiError {
    ApiError {
        code: 412,
        body: json!({ "message": message, "status": status }),
    }
}

type Answer = Result<Value, ApiError>;

#[derive(Default)]
struct Org {
    token: String,
    enterprise: bool,
    folders: BTreeMap<String, Folder>,
    dashboards: BTreeMap<String, Dashboard>,
    teams: BTreeMap<u64, Team>,
    datasources: BTreeMap<String, Datasource>,
    folder_ids: u64,
    dashboard_ids: u64,
    team_ids: u64,
    datasource_ids: u64,
    faults: Vec<Fault>,
    requests: Vec<RequestRecord>,
}

type Shared = Arc<Mutex<Org>>;

/// The running fake. Stops serving when dropped.
pub struct FakeGrafana {
    org: Shared,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeGrafana {
    /// Grafana Enterprise (serves the data source permission API), accepting `token`.
    pub async fn start(token: &str) -> FakeGrafana {
        Self::serve(token, true).await
    }

    /// Grafana OSS: the data source permission API answers 404.
    pub async fn start_oss(token: &str) -> FakeGrafana {
        Self::serve(token, false).await
    }

    async fn serve(token: &str, enterprise: bool) -> FakeGrafana {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Grafana API");
        let addr = listener.local_addr().expect("local address");
        let org = Shared::new(Mutex::new(Org {
            token: token.to_owned(),
            enterprise,
            ..Org::default()
        }));
        let app = Router::new().fallback(handle).with_state(org.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeGrafana {
            org,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Org> {
        self.org.lock().expect("fake Grafana lock")
    }

    /// Every folder, ordered by uid.
    pub fn folders(&self) -> Vec<Folder> {
        self.lock().folders.values().cloned().collect()
    }

    pub fn folder(&self, uid: &str) -> Option<Folder> {
        self.lock().folders.get(uid).cloned()
    }

    /// The folder's permission items (sorted; `None` if there is no such folder).
    pub fn folder_permissions(&self, uid: &str) -> Option<Vec<FolderPermission>> {
        self.folder(uid).map(|f| {
            let mut items = f.permissions;
            items.sort();
            items
        })
    }

    /// Every dashboard, ordered by uid.
    pub fn dashboards(&self) -> Vec<Dashboard> {
        self.lock().dashboards.values().cloned().collect()
    }

    pub fn dashboard(&self, uid: &str) -> Option<Dashboard> {
        self.lock().dashboards.get(uid).cloned()
    }

    /// Every team, ordered by id.
    pub fn teams(&self) -> Vec<Team> {
        self.lock().teams.values().cloned().collect()
    }

    /// Every data source, ordered by uid.
    pub fn datasources(&self) -> Vec<Datasource> {
        self.lock().datasources.values().cloned().collect()
    }

    /// The data source with its secrets (`secure_json_data["password"]`).
    pub fn datasource(&self, uid: &str) -> Option<Datasource> {
        self.lock().datasources.get(uid).cloned()
    }

    /// The data source's RBAC permissions (sorted; `None` if there is no such data source).
    pub fn datasource_permissions(&self, uid: &str) -> Option<Vec<DatasourcePermission>> {
        self.datasource(uid).map(|d| {
            let mut items = d.permissions;
            items.sort();
            items
        })
    }

    /// Creates a team as an administrator would; its id. Panics if the name is taken.
    pub fn create_team(&self, name: &str) -> u64 {
        let answer = self.lock().create_team(&json!({ "name": name }));
        match answer {
            Ok(v) => v["teamId"].as_u64().expect("teamId"),
            Err(e) => panic!("create team {name:?}: {}", e.body),
        }
    }

    /// Deletes a team (and its permission entries); whether it existed.
    pub fn delete_team(&self, id: u64) -> bool {
        self.lock().delete_team(id).is_ok()
    }

    /// Creates a root folder with Grafana's default permissions. Panics on a conflict.
    pub fn create_folder(&self, uid: &str, title: &str) {
        let answer = self
            .lock()
            .create_folder(&json!({ "uid": uid, "title": title }));
        if let Err(e) = answer {
            panic!("create folder {uid:?}: {}", e.body);
        }
    }

    /// Deletes a folder with its dashboards and subfolders; whether it existed.
    pub fn delete_folder(&self, uid: &str) -> bool {
        self.lock().delete_folder(uid).is_ok()
    }

    /// Replaces a folder's permission items as an administrator would. Panics on bad items.
    pub fn set_folder_permissions(&self, uid: &str, items: &[FolderPermission]) {
        let items: Vec<Value> = items
            .iter()
            .map(|p| json!({ "role": p.role, "teamId": p.team_id, "permission": p.permission }))
            .collect();
        let answer = self
            .lock()
            .set_folder_permissions(uid, &json!({ "items": items }));
        if let Err(e) = answer {
            panic!("set permissions of folder {uid:?}: {}", e.body);
        }
    }

    /// Edits a stored dashboard's JSON in place, as someone in the UI would (a save: the
    /// version increases). Panics if there is no such dashboard.
    pub fn edit_dashboard(&self, uid: &str, edit: impl FnOnce(&mut Value)) {
        let mut org = self.lock();
        let dashboard = org
            .dashboards
            .get_mut(uid)
            .unwrap_or_else(|| panic!("edit dashboard {uid:?}: no such dashboard"));
        edit(&mut dashboard.json);
        dashboard.version += 1;
        dashboard.json["version"] = json!(dashboard.version);
        dashboard.json["uid"] = json!(dashboard.uid);
        dashboard.json["id"] = json!(dashboard.id);
        dashboard.title = dashboard.json["title"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }

    /// Deletes a dashboard; whether it existed.
    pub fn delete_dashboard(&self, uid: &str) -> bool {
        self.lock().dashboards.remove(uid).is_some()
    }

    /// Deletes a data source; whether it existed.
    pub fn delete_datasource(&self, uid: &str) -> bool {
        self.lock().datasources.remove(uid).is_some()
    }

    /// Queues a fault; faults are checked in the order they were added.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// The requests that tried to write (everything but GET), whatever they did.
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

impl Drop for FakeGrafana {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn handle(
    State(org): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let mut org = org.lock().expect("fake Grafana lock");
    let fault = crate::fault::fire(&mut org.faults, method.as_str(), &path);
    let answer = if let Some(status) = fault {
        Err(err(status, format!("injected fault ({status})")))
    } else if path == "/api/health" && method == Method::GET {
        Ok(json!({ "commit": "fake", "database": "ok", "version": VERSION }))
    } else if !authorized(&headers, &org.token) {
        Err(err(401, "Unauthorized"))
    } else {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        org.route(&method, &segments, &query, &body)
    };
    let (status, body) = match answer {
        Ok(body) => (200, body),
        Err(e) => (e.code, e.body),
    };
    org.requests.push(RequestRecord {
        method: method.to_string(),
        path,
        query: uri.query().unwrap_or_default().to_owned(),
        status,
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == token)
}

fn parse(body: &[u8]) -> Answer {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(err(400, "bad request data: the body is not a JSON object")),
        Err(e) => Err(err(400, format!("bad request data: {e}"))),
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every value of a repeated (or comma-separated) parameter.
fn params(query: &[(String, String)], name: &str) -> Vec<String> {
    query
        .iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.split(',').map(str::to_owned))
        .filter(|v| !v.is_empty())
        .collect()
}

fn number(query: &[(String, String)], name: &str, default: usize) -> Result<usize, ApiError> {
    match param(query, name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| err(400, format!("{name}: not a number: {v:?}"))),
    }
}

fn page<T>(items: Vec<T>, limit: usize, page: usize) -> Vec<T> {
    items
        .into_iter()
        .skip(limit.saturating_mul(page.max(1) - 1))
        .take(limit)
        .collect()
}

fn str_field<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field].as_str().unwrap_or_default()
}

fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// Grafana's uid rule: at most 40 characters of `[a-zA-Z0-9_-]`.
fn check_uid(uid: &str) -> Result<&str, ApiError> {
    if uid.len() > 40 {
        return Err(err(
            400,
            format!("uid {uid:?}: too long, max 40 characters"),
        ));
    }
    if !uid
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(err(
            400,
            format!("uid {uid:?}: contains illegal characters"),
        ));
    }
    Ok(uid)
}

fn not_found() -> ApiError {
    err(404, "Not found")
}

impl Org {
    fn route(
        &mut self,
        method: &Method,
        path: &[&str],
        query: &[(String, String)],
        body: &[u8],
    ) -> Answer {
        match (method.as_str(), path) {
            ("GET", ["api", "folders"]) => self.list_folders(query),
            ("POST", ["api", "folders"]) => self.create_folder(&parse(body)?),
            ("GET", ["api", "folders", uid]) => Ok(self.folder_json(self.folder(uid)?)),
            ("PUT", ["api", "folders", uid]) => self.update_folder(uid, &parse(body)?),
            ("DELETE", ["api", "folders", uid]) => self.delete_folder(uid),
            ("GET", ["api", "folders", uid, "permissions"]) => self.folder_permissions(uid),
            ("POST", ["api", "folders", uid, "permissions"]) => {
                self.set_folder_permissions(uid, &parse(body)?)
            }
            ("POST", ["api", "dashboards", "db"]) => self.save_dashboard(&parse(body)?),
            ("GET", ["api", "dashboards", "uid", uid]) => self.get_dashboard(uid),
            ("DELETE", ["api", "dashboards", "uid", uid]) => {
                let d = self
                    .dashboards
                    .remove(*uid)
                    .ok_or_else(dashboard_not_found)?;
                Ok(
                    json!({ "title": d.title, "message": format!("Dashboard {} deleted", d.title), "id": d.id }),
                )
            }
            ("GET", ["api", "search"]) => self.search(query),
            ("GET", ["api", "teams", "search"]) => self.search_teams(query),
            ("POST", ["api", "teams"]) => self.create_team(&parse(body)?),
            ("GET", ["api", "teams", id]) => {
                let team = self.team(id)?;
                Ok(json!({ "id": team.id, "orgId": 1, "name": team.name, "email": team.email }))
            }
            ("DELETE", ["api", "teams", id]) => {
                let id = self.team(id)?.id;
                self.delete_team(id)
            }
            ("GET", ["api", "datasources"]) => Ok(Value::Array(
                self.datasources
                    .values()
                    .map(|d| d.settings.clone())
                    .collect(),
            )),
            ("POST", ["api", "datasources"]) => self.create_datasource(&parse(body)?),
            ("GET", ["api", "datasources", "uid", uid]) => {
                Ok(self.datasource(uid)?.settings.clone())
            }
            ("PUT", ["api", "datasources", "uid", uid]) => {
                self.update_datasource(uid, &parse(body)?)
            }
            ("DELETE", ["api", "datasources", "uid", uid]) => {
                let d = self
                    .datasources
                    .remove(*uid)
                    .ok_or_else(datasource_not_found)?;
                Ok(json!({ "message": "Data source deleted", "id": d.id }))
            }
            (_, ["api", "access-control", "datasources", ..]) if !self.enterprise => {
                Err(not_found())
            }
            ("GET", ["api", "access-control", "datasources", uid]) => {
                self.datasource_permissions(uid)
            }
            ("POST", ["api", "access-control", "datasources", uid, kind, subject]) => {
                self.set_datasource_permission(uid, kind, subject, &parse(body)?)
            }
            _ => Err(not_found()),
        }
    }

    fn folder(&self, uid: &str) -> Result<&Folder, ApiError> {
        self.folders
            .get(uid)
            .ok_or_else(|| err(404, "folder not found"))
    }

    fn folder_json(&self, f: &Folder) -> Value {
        let mut v = json!({
            "id": f.id, "uid": f.uid, "title": f.title,
            "url": format!("/dashboards/f/{}/{}", f.uid, slug(&f.title)),
            "hasAcl": false, "canSave": true, "canEdit": true, "canAdmin": true, "canDelete": true,
            "version": f.version,
        });
        if let Some(parent) = &f.parent_uid {
            v["parentUid"] = json!(parent);
            let mut parents = Vec::new();
            let mut next = Some(parent.clone());
            while let Some(uid) = next {
                let Some(p) = self.folders.get(&uid) else {
                    break;
                };
                parents.insert(0, json!({ "id": p.id, "uid": p.uid, "title": p.title }));
                next = p.parent_uid.clone();
            }
            v["parents"] = Value::Array(parents);
        }
        v
    }

    fn list_folders(&self, query: &[(String, String)]) -> Answer {
        let parent = param(query, "parentUid").filter(|p| !p.is_empty());
        let mut folders: Vec<&Folder> = self
            .folders
            .values()
            .filter(|f| f.parent_uid.as_deref() == parent)
            .collect();
        folders.sort_by(|a, b| a.title.cmp(&b.title).then(a.uid.cmp(&b.uid)));
        let folders = page(
            folders,
            number(query, "limit", 1000)?,
            number(query, "page", 1)?,
        );
        Ok(folders
            .into_iter()
            .map(|f| {
                let mut v = json!({ "id": f.id, "uid": f.uid, "title": f.title });
                if let Some(parent) = &f.parent_uid {
                    v["parentUid"] = json!(parent);
                }
                v
            })
            .collect())
    }

    fn title_taken(&self, title: &str, parent: Option<&str>, except: &str) -> bool {
        self.folders
            .values()
            .any(|f| f.uid != except && f.parent_uid.as_deref() == parent && f.title == title)
    }

    fn create_folder(&mut self, body: &Value) -> Answer {
        let title = str_field(body, "title").trim().to_owned();
        if title.is_empty() {
            return Err(err(400, "folder title cannot be empty"));
        }
        let parent = body["parentUid"]
            .as_str()
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        if let Some(p) = &parent {
            if !self.folders.contains_key(p) {
                return Err(err(
                    400,
                    format!("parentUid: parent folder {p:?} not found"),
                ));
            }
        }
        let id = self.folder_ids + 1;
        let uid = match str_field(body, "uid") {
            "" => format!("fgen{id:06}"),
            uid => check_uid(uid)?.to_owned(),
        };
        if self.folders.contains_key(&uid) || self.dashboards.contains_key(&uid) {
            return Err(err(409, "a folder with the same uid already exists"));
        }
        if self.title_taken(&title, parent.as_deref(), &uid) {
            return Err(err(
                409,
                "a folder with the same name already exists in the current location",
            ));
        }
        self.folder_ids = id;
        let folder = Folder {
            id,
            uid: uid.clone(),
            title,
            parent_uid: parent,
            version: 1,
            permissions: vec![
                FolderPermission::role("Editor", EDIT),
                FolderPermission::role("Viewer", VIEW),
            ],
        };
        self.folders.insert(uid.clone(), folder);
        Ok(self.folder_json(&self.folders[&uid]))
    }

    fn update_folder(&mut self, uid: &str, body: &Value) -> Answer {
        let folder = self.folder(uid)?.clone();
        let overwrite = body["overwrite"].as_bool().unwrap_or(false);
        if !overwrite && body["version"].as_u64() != Some(folder.version) {
            return Err(precondition(
                "The folder has been changed by someone else",
                "version-mismatch",
            ));
        }
        let title = match str_field(body, "title").trim() {
            "" => folder.title.clone(),
            t => t.to_owned(),
        };
        if self.title_taken(&title, folder.parent_uid.as_deref(), uid) {
            return Err(err(
                409,
                "a folder with the same name already exists in the current location",
            ));
        }
        let stored = self.folders.get_mut(uid).expect("checked above");
        stored.title = title;
        stored.version += 1;
        Ok(self.folder_json(&self.folders[uid]))
    }

    fn delete_folder(&mut self, uid: &str) -> Answer {
        let id = self.folder(uid)?.id;
        let mut doomed = vec![uid.to_owned()];
        let mut i = 0;
        while i < doomed.len() {
            let children: Vec<String> = self
                .folders
                .values()
                .filter(|f| f.parent_uid.as_deref() == Some(doomed[i].as_str()))
                .map(|f| f.uid.clone())
                .collect();
            doomed.extend(children);
            i += 1;
        }
        for uid in &doomed {
            self.folders.remove(uid);
        }
        self.dashboards
            .retain(|_, d| d.folder_uid.as_ref().is_none_or(|f| !doomed.contains(f)));
        Ok(json!({ "message": "Folder deleted", "id": id }))
    }

    fn folder_permissions(&self, uid: &str) -> Answer {
        let folder = self.folder(uid)?;
        let admin = FolderPermission::role("Admin", ADMIN);
        let items = std::iter::once(&admin).chain(&folder.permissions).map(|p| {
            let team = p.team_id.and_then(|id| self.teams.get(&id));
            json!({
                "folderId": folder.id, "uid": folder.uid, "title": folder.title, "isFolder": true,
                "userId": 0, "userLogin": "", "userEmail": "",
                "teamId": p.team_id.unwrap_or(0),
                "team": team.map(|t| t.name.as_str()).unwrap_or_default(),
                "role": p.role.as_deref().unwrap_or_default(),
                "permission": p.permission,
                "permissionName": permission_name(p.permission),
            })
        });
        Ok(items.collect())
    }

    fn set_folder_permissions(&mut self, uid: &str, body: &Value) -> Answer {
        self.folder(uid)?;
        let Some(items) = body["items"].as_array() else {
            return Err(err(400, "items: an array of permission items is required"));
        };
        let mut permissions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let permission = item["permission"].as_u64().unwrap_or(0);
            let permission = match u8::try_from(permission) {
                Ok(p @ (VIEW | EDIT | ADMIN)) => p,
                _ => {
                    return Err(err(
                        400,
                        format!("items[{i}].permission: must be 1, 2 or 4"),
                    ))
                }
            };
            let role = item["role"].as_str().filter(|r| !r.is_empty());
            let team = item["teamId"].as_u64().filter(|t| *t > 0);
            if item["userId"].as_u64().is_some_and(|u| u > 0) {
                return Err(err(400, format!("items[{i}].userId: user not found")));
            }
            match (role, team) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        400,
                        format!(
                            "items[{i}]: a role and a team cannot be set on the same permission"
                        ),
                    ))
                }
                (None, None) => {
                    return Err(err(400, format!("items[{i}]: needs a role or a teamId")))
                }
                // Admins always have access to everything: nothing to store.
                (Some("Admin"), None) => {}
                (Some(role @ ("Viewer" | "Editor")), None) => {
                    permissions.push(FolderPermission::role(role, permission))
                }
                (Some(role), None) => {
                    return Err(err(400, format!("items[{i}].role: invalid role {role:?}")))
                }
                (None, Some(team)) if !self.teams.contains_key(&team) => {
                    return Err(err(
                        400,
                        format!("items[{i}].teamId: team {team} not found"),
                    ))
                }
                (None, Some(team)) => permissions.push(FolderPermission::team(team, permission)),
            }
        }
        let folder = self.folders.get_mut(uid).expect("checked above");
        folder.permissions = permissions;
        Ok(
            json!({ "message": "Folder permissions updated", "id": folder.id, "title": folder.title }),
        )
    }

    fn save_dashboard(&mut self, body: &Value) -> Answer {
        let mut json = body["dashboard"].clone();
        if !json.is_object() {
            return Err(err(400, "dashboard: a dashboard object is required"));
        }
        let title = str_field(&json, "title").trim().to_owned();
        if title.is_empty() {
            return Err(err(400, "Dashboard title cannot be empty"));
        }
        let overwrite = body["overwrite"].as_bool().unwrap_or(false);
        let folder_uid = body["folderUid"]
            .as_str()
            .filter(|f| !f.is_empty())
            .map(str::to_owned);
        if let Some(f) = &folder_uid {
            if !self.folders.contains_key(f) {
                return Err(err(400, "folder not found"));
            }
        }
        let mut uid = match str_field(&json, "uid") {
            "" => format!("dgen{:06}", self.dashboard_ids + 1),
            uid => check_uid(uid)?.to_owned(),
        };
        if let Some(same_title) = self
            .dashboards
            .values()
            .find(|d| d.uid != uid && d.folder_uid == folder_uid && d.title == title)
        {
            if !overwrite {
                return Err(precondition(
                    "A dashboard with the same name in the folder already exists",
                    "name-exists",
                ));
            }
            // Grafana saves over the dashboard with that title (its uid wins).
            uid = same_title.uid.clone();
        }
        let existing = self.dashboards.get(&uid);
        if let Some(existing) = existing {
            if !overwrite && json["version"].as_u64() != Some(existing.version) {
                return Err(precondition(
                    "The dashboard has been changed by someone else",
                    "version-mismatch",
                ));
            }
        }
        let (id, version) = match existing {
            Some(e) => (e.id, e.version + 1),
            None => {
                self.dashboard_ids += 1;
                (self.dashboard_ids, 1)
            }
        };
        json["id"] = json!(id);
        json["uid"] = json!(uid);
        json["version"] = json!(version);
        let dashboard = Dashboard {
            id,
            uid: uid.clone(),
            title: title.clone(),
            folder_uid: folder_uid.clone(),
            version,
            json,
        };
        self.dashboards.insert(uid.clone(), dashboard);
        let slug = slug(&title);
        Ok(json!({
            "id": id, "uid": uid, "url": format!("/d/{uid}/{slug}"), "status": "success",
            "version": version, "slug": slug, "folderUid": folder_uid.unwrap_or_default(),
        }))
    }

    fn get_dashboard(&self, uid: &str) -> Answer {
        let d = self.dashboards.get(uid).ok_or_else(dashboard_not_found)?;
        let folder = d.folder_uid.as_ref().and_then(|f| self.folders.get(f));
        let own_slug = slug(&d.title);
        Ok(json!({
            "dashboard": d.json,
            "meta": {
                "type": "db", "slug": own_slug, "url": format!("/d/{uid}/{own_slug}"),
                "canSave": true, "canEdit": true, "canAdmin": true, "canStar": true, "canDelete": true,
                "provisioned": false, "version": d.version,
                "folderId": folder.map_or(0, |f| f.id),
                "folderUid": folder.map(|f| f.uid.as_str()).unwrap_or_default(),
                "folderTitle": folder.map_or("General", |f| f.title.as_str()),
                "folderUrl": folder.map(|f| format!("/dashboards/f/{}/{}", f.uid, slug(&f.title))).unwrap_or_default(),
            },
        }))
    }

    fn search(&self, query: &[(String, String)]) -> Answer {
        let kind = param(query, "type");
        let text = param(query, "query").unwrap_or_default().to_lowercase();
        let folder_uids = params(query, "folderUIDs");
        let dashboard_uids = params(query, "dashboardUIDs");
        let mut hits: Vec<(String, Value)> = Vec::new();
        if kind.is_none_or(|k| k == "dash-folder") && dashboard_uids.is_empty() {
            for f in self.folders.values() {
                let in_folder = folder_uids.is_empty()
                    || f.parent_uid
                        .as_ref()
                        .is_some_and(|p| folder_uids.contains(p));
                if in_folder && f.title.to_lowercase().contains(&text) {
                    let url = format!("/dashboards/f/{}/{}", f.uid, slug(&f.title));
                    hits.push((f.title.clone(), json!({ "id": f.id, "uid": f.uid, "title": f.title, "url": url, "type": "dash-folder", "tags": [], "isStarred": false })));
                }
            }
        }
        if kind.is_none_or(|k| k == "dash-db") {
            for d in self.dashboards.values() {
                let in_folder = folder_uids.is_empty()
                    || folder_uids.contains(d.folder_uid.as_ref().unwrap_or(&"general".to_owned()));
                let wanted = dashboard_uids.is_empty() || dashboard_uids.contains(&d.uid);
                if in_folder && wanted && d.title.to_lowercase().contains(&text) {
                    let mut hit = json!({
                        "id": d.id, "uid": d.uid, "title": d.title, "uri": format!("db/{}", slug(&d.title)),
                        "url": format!("/d/{}/{}", d.uid, slug(&d.title)), "type": "dash-db",
                        "tags": d.json["tags"].as_array().cloned().unwrap_or_default(), "isStarred": false,
                    });
                    if let Some(f) = d.folder_uid.as_ref().and_then(|f| self.folders.get(f)) {
                        hit["folderId"] = json!(f.id);
                        hit["folderUid"] = json!(f.uid);
                        hit["folderTitle"] = json!(f.title);
                    }
                    hits.push((d.title.clone(), hit));
                }
            }
        }
        hits.sort_by_key(|a| a.0.to_lowercase());
        Ok(hits.into_iter().map(|(_, hit)| hit).collect())
    }

    fn team(&self, id: &str) -> Result<&Team, ApiError> {
        id.parse::<u64>()
            .ok()
            .and_then(|id| self.teams.get(&id))
            .ok_or_else(|| err(404, "Team not found"))
    }

    fn search_teams(&self, query: &[(String, String)]) -> Answer {
        let name = param(query, "name").filter(|n| !n.is_empty());
        let text = param(query, "query").unwrap_or_default().to_lowercase();
        let mut teams: Vec<&Team> = self
            .teams
            .values()
            .filter(|t| name.is_none_or(|n| t.name == n) && t.name.to_lowercase().contains(&text))
            .collect();
        teams.sort_by(|a, b| a.name.cmp(&b.name));
        let total = teams.len();
        let (per_page, page_no) = (number(query, "perpage", 1000)?, number(query, "page", 1)?);
        let teams: Vec<Value> = page(teams, per_page, page_no)
            .into_iter()
            .map(|t| json!({ "id": t.id, "orgId": 1, "name": t.name, "email": t.email, "avatarUrl": "", "memberCount": 0 }))
            .collect();
        Ok(json!({ "totalCount": total, "teams": teams, "page": page_no, "perPage": per_page }))
    }

    fn create_team(&mut self, body: &Value) -> Answer {
        let name = str_field(body, "name").trim();
        if name.is_empty() {
            return Err(err(400, "name: a team name is required"));
        }
        if self.teams.values().any(|t| t.name == name) {
            return Err(err(409, "Team name taken"));
        }
        self.team_ids += 1;
        let id = self.team_ids;
        let email = str_field(body, "email").to_owned();
        self.teams.insert(
            id,
            Team {
                id,
                name: name.to_owned(),
                email,
            },
        );
        Ok(json!({ "message": "Team created", "teamId": id, "uid": format!("tgen{id:06}") }))
    }

    /// Deletes a team and every permission entry naming it, as Grafana does.
    fn delete_team(&mut self, id: u64) -> Answer {
        self.teams
            .remove(&id)
            .ok_or_else(|| err(404, "Failed to delete Team. ID not found"))?;
        for folder in self.folders.values_mut() {
            folder.permissions.retain(|p| p.team_id != Some(id));
        }
        for ds in self.datasources.values_mut() {
            ds.permissions.retain(|p| p.team_id != Some(id));
        }
        Ok(json!({ "message": "Team deleted" }))
    }

    fn datasource(&self, uid: &str) -> Result<&Datasource, ApiError> {
        self.datasources.get(uid).ok_or_else(datasource_not_found)
    }

    /// The settings a GET returns, from a create or update body (secrets left out).
    fn settings(
        id: u64,
        uid: &str,
        version: u64,
        body: &Value,
        secure: &BTreeMap<String, String>,
    ) -> Value {
        let fields: Map<String, Value> = secure.keys().map(|k| (k.clone(), json!(true))).collect();
        json!({
            "id": id, "uid": uid, "orgId": 1,
            "name": str_field(body, "name"), "type": str_field(body, "type"), "typeLogoUrl": "",
            "access": body["access"].as_str().unwrap_or("proxy"), "url": str_field(body, "url"),
            "user": str_field(body, "user"), "database": str_field(body, "database"),
            "basicAuth": body["basicAuth"].as_bool().unwrap_or(false),
            "basicAuthUser": str_field(body, "basicAuthUser"),
            "withCredentials": body["withCredentials"].as_bool().unwrap_or(false),
            "isDefault": body["isDefault"].as_bool().unwrap_or(false),
            "jsonData": if body["jsonData"].is_object() { body["jsonData"].clone() } else { json!({}) },
            "secureJsonFields": fields, "version": version, "readOnly": false,
        })
    }

    fn check_datasource(
        &self,
        body: &Value,
        uid: &str,
        except_id: u64,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        for field in ["name", "type"] {
            if str_field(body, field).trim().is_empty() {
                return Err(err(400, format!("{field}: required field is missing")));
            }
        }
        check_uid(uid)?;
        let others = || self.datasources.values().filter(|d| d.id != except_id);
        if others().any(|d| d.name == str_field(body, "name")) {
            return Err(err(409, "data source with the same name already exists"));
        }
        if others().any(|d| d.uid == uid) {
            return Err(err(409, "data source with the same uid already exists"));
        }
        let mut secrets = BTreeMap::new();
        if let Some(secure) = body["secureJsonData"].as_object() {
            for (k, v) in secure {
                let Some(v) = v.as_str() else {
                    return Err(err(400, format!("secureJsonData.{k}: must be a string")));
                };
                secrets.insert(k.clone(), v.to_owned());
            }
        }
        Ok(secrets)
    }

    fn create_datasource(&mut self, body: &Value) -> Answer {
        let id = self.datasource_ids + 1;
        let uid = match str_field(body, "uid") {
            "" => format!("dsgen{id:06}"),
            uid => uid.to_owned(),
        };
        let secrets = self.check_datasource(body, &uid, 0)?;
        self.datasource_ids = id;
        let permissions = if self.enterprise {
            ["Editor", "Viewer"]
                .map(|role| DatasourcePermission {
                    team_id: None,
                    built_in_role: Some(role.to_owned()),
                    permission: "Query".to_owned(),
                })
                .to_vec()
        } else {
            Vec::new()
        };
        let settings = Self::settings(id, &uid, 1, body, &secrets);
        let name = str_field(body, "name").to_owned();
        let ds = Datasource {
            id,
            uid: uid.clone(),
            name: name.clone(),
            version: 1,
            settings: settings.clone(),
            secure_json_data: secrets,
            permissions,
        };
        self.datasources.insert(uid, ds);
        Ok(json!({ "datasource": settings, "id": id, "message": "Datasource added", "name": name }))
    }

    fn update_datasource(&mut self, uid: &str, body: &Value) -> Answer {
        let current = self.datasource(uid)?.clone();
        if body["version"]
            .as_u64()
            .is_some_and(|v| v != 0 && v < current.version)
        {
            return Err(err(
                409,
                "Datasource has already been updated by someone else. Please reload and try again",
            ));
        }
        let new_uid = match str_field(body, "uid") {
            "" => uid.to_owned(),
            u => u.to_owned(),
        };
        let mut secrets = current.secure_json_data.clone();
        secrets.extend(self.check_datasource(body, &new_uid, current.id)?);
        let version = current.version + 1;
        let settings = Self::settings(current.id, &new_uid, version, body, &secrets);
        let name = str_field(body, "name").to_owned();
        self.datasources.remove(uid);
        let ds = Datasource {
            uid: new_uid.clone(),
            name: name.clone(),
            version,
            settings: settings.clone(),
            secure_json_data: secrets,
            ..current
        };
        self.datasources.insert(new_uid, ds);
        Ok(
            json!({ "datasource": settings, "id": current.id, "message": "Datasource updated", "name": name }),
        )
    }

    fn datasource_permissions(&self, uid: &str) -> Answer {
        let ds = self.datasource(uid)?;
        let items = ds.permissions.iter().enumerate().map(|(i, p)| {
            let actions = match p.permission.as_str() {
                "Query" => json!(["datasources:read", "datasources:query"]),
                _ => json!([
                    "datasources:read",
                    "datasources:query",
                    "datasources:write",
                    "datasources:delete"
                ]),
            };
            let mut v = json!({
                "id": i + 1, "isManaged": true, "isInherited": false, "isServiceAccount": false,
                "actions": actions, "permission": p.permission,
            });
            if let Some(team) = p.team_id {
                v["roleName"] = json!(format!("managed:teams:{team}:permissions"));
                v["teamId"] = json!(team);
                v["team"] = json!(self
                    .teams
                    .get(&team)
                    .map(|t| t.name.as_str())
                    .unwrap_or_default());
            }
            if let Some(role) = &p.built_in_role {
                v["roleName"] = json!(format!(
                    "managed:builtins:{}:permissions",
                    role.to_lowercase()
                ));
                v["builtInRole"] = json!(role);
            }
            v
        });
        Ok(items.collect())
    }

    fn set_datasource_permission(
        &mut self,
        uid: &str,
        kind: &str,
        subject: &str,
        body: &Value,
    ) -> Answer {
        self.datasource(uid)?;
        let (team_id, built_in_role) = match kind {
            "teams" => match subject
                .parse::<u64>()
                .ok()
                .filter(|t| self.teams.contains_key(t))
            {
                Some(team) => (Some(team), None),
                None => return Err(err(400, format!("team {subject:?} not found"))),
            },
            "builtInRoles" if matches!(subject, "Viewer" | "Editor" | "Admin") => {
                (None, Some(subject.to_owned()))
            }
            "builtInRoles" => {
                return Err(err(400, format!("builtInRoles: invalid role {subject:?}")))
            }
            _ => return Err(not_found()),
        };
        let permission = match body["permission"].as_str() {
            Some(p @ ("" | "Query" | "Edit" | "Admin")) => p.to_owned(),
            other => {
                return Err(err(
                    400,
                    format!("permission: must be Query, Edit, Admin or \"\", not {other:?}"),
                ))
            }
        };
        let ds = self.datasources.get_mut(uid).expect("checked above");
        ds.permissions
            .retain(|p| !(p.team_id == team_id && p.built_in_role == built_in_role));
        if permission.is_empty() {
            return Ok(json!({ "message": "Permission removed" }));
        }
        ds.permissions.push(DatasourcePermission {
            team_id,
            built_in_role,
            permission,
        });
        Ok(json!({ "message": "Permission updated" }))
    }
}

fn permission_name(permission: u8) -> &'static str {
    match permission {
        VIEW => "View",
        EDIT => "Edit",
        _ => "Admin",
    }
}

fn dashboard_not_found() -> ApiError {
    err(404, "Dashboard not found")
}

fn datasource_not_found() -> ApiError {
    err(404, "Data source not found")
}
