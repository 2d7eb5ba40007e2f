//! [`GrafanaReconciler`]: the outbox reconciler named `grafana`. For each tenant event it
//! brings the tenant's Grafana objects in line with the tenant's state, level-triggered and
//! idempotent (every step reads what Grafana holds and writes only what differs), and a resync
//! repairs drift the same way:
//!
//! * active or suspended: the tenant's database login (first: it marks a tenant that may have
//!   objects in Grafana); the owner group's team (matched by name, created if missing); the
//!   folder; the folder's permissions (the team may view, nobody else below admin); the
//!   tenant's database login and the data source that signs in with it; with
//!   `restrict_datasource_access`, the data source's permissions (only the team may query);
//!   the tenant cost dashboard pinned to the tenant;
//! * offboarding or offboarded, while the login exists: the dashboard, folder and data source
//!   deleted, the login dropped (last: while it exists, the removal is not finished);
//! * requested or rejected: nothing (never provisioned).
//!
//! Teams are never deleted: an owner group may be shared by several tenants and by people.

use std::collections::BTreeSet;

use async_trait::async_trait;
use ledger::enforcement::Fence;
use ledger::tenant::{Tenant, TenantId, TenantState};
use ledger::Store;
use lifecycle::{HandlerError, OutboxEvent, Reconciler};
use rand::distributions::{Alphanumeric, DistString};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::client::{Answer, ClientError, GrafanaClient};
use crate::config::{DatasourceSettings, GrafanaSettings};
use crate::dashboard::{pinned, same_dashboard, TenantObjects, TEMPLATE};

/// The reconciler's (and its cursor's) name.
pub const NAME: &str = "grafana";

/// Grafana's PostgreSQL data source plugin.
pub const DATASOURCE_TYPE: &str = "grafana-postgresql-datasource";

/// The reconciler.
pub struct GrafanaReconciler {
    client: GrafanaClient,
    store: Store,
    leader: watch::Receiver<Option<Fence>>,
    template: Value,
    datasource: DatasourceSettings,
    restrict_datasource_access: bool,
}

/// What one reconcile changed in Grafana or the database, in words.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes(pub Vec<String>);

impl Changes {
    fn add(&mut self, change: impl Into<String>) {
        self.0.push(change.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

fn client_failure(e: ClientError) -> HandlerError {
    HandlerError::new(e.class(), e.to_string())
}

fn store_failure(e: ledger::Error) -> HandlerError {
    HandlerError::new(e.metric_label(), e.to_string())
}

/// Grafana said no: what, and Grafana's words.
fn refused(what: &str, answer: &Answer) -> HandlerError {
    let kind = match answer.status.as_u16() {
        401 | 403 => "unauthorized",
        409 | 412 => "conflict",
        _ => "rejected",
    };
    HandlerError::new(
        kind,
        format!(
            "Grafana refused to {what}: {} {}",
            answer.status,
            answer.message()
        ),
    )
}

/// `s` for a URL path or query: unreserved characters as they are, the rest percent-encoded.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 40 random letters and digits (about 238 bits) from the OS.
fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, 40)
}

/// A SCRAM salt: 16 random bytes from the OS.
fn new_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    salt
}

impl GrafanaReconciler {
    /// The reconciler over `settings`; it writes to the database with `leader`'s fence.
    pub fn new(
        settings: &GrafanaSettings,
        store: Store,
        leader: watch::Receiver<Option<Fence>>,
    ) -> Result<GrafanaReconciler, crate::Error> {
        let client =
            GrafanaClient::new(settings).map_err(|e| crate::Error::Client(e.to_string()))?;
        let template = serde_json::from_str(TEMPLATE)
            .map_err(|e| crate::Error::Template(format!("dashboards/tenant-costs.json: {e}")))?;
        Ok(GrafanaReconciler {
            client,
            store,
            leader,
            template,
            datasource: settings.datasource.clone(),
            restrict_datasource_access: settings.restrict_datasource_access,
        })
    }

    /// Whether Grafana answers with the token (`GET /api/folders` needs a valid one): a start-up
    /// check that logs, as Kafka's, since Grafana is not the daemon's lifeline.
    pub async fn check(&self) -> Result<(), HandlerError> {
        let answer = self
            .client
            .call("check", Method::GET, "api/folders?limit=1", None)
            .await
            .map_err(client_failure)?;
        if answer.ok() {
            Ok(())
        } else {
            Err(refused("list folders with grafana.token", &answer))
        }
    }

    fn fence(&self) -> Result<Fence, HandlerError> {
        (*self.leader.borrow())
            .ok_or_else(|| HandlerError::new("not_leading", "this daemon does not lead"))
    }

    /// Brings `id`'s Grafana objects in line with its state; what it changed.
    pub async fn reconcile(&self, id: &TenantId) -> Result<Changes, HandlerError> {
        let tenant = match self.store.get_tenant(id).await {
            Ok(tenant) => tenant,
            Err(ledger::Error::NotFound { .. }) => return Ok(Changes::default()),
            Err(e) => return Err(store_failure(e)),
        };
        let mut changes = Changes::default();
        match tenant.state {
            TenantState::Active | TenantState::Suspended => {
                self.ensure(&tenant, &mut changes).await?
            }
            // The login is made first and dropped last: without it, Grafana holds nothing of
            // the tenant (never provisioned, or removed).
            TenantState::Offboarding | TenantState::Offboarded => {
                if self
                    .store
                    .tenant_login(id)
                    .await
                    .map_err(store_failure)?
                    .is_some()
                {
                    self.remove(id, &mut changes).await?;
                }
            }
            TenantState::Requested | TenantState::Rejected => {}
        }
        Ok(changes)
    }

    async fn ensure(&self, tenant: &Tenant, changes: &mut Changes) -> Result<(), HandlerError> {
        let objects = TenantObjects::of(tenant);
        // The login first: it marks a tenant that may have objects in Grafana (`remove`).
        // A login made here has a password no data source knows: the data source is rewritten.
        let (role, new_login) = match self
            .store
            .tenant_login(&tenant.id)
            .await
            .map_err(store_failure)?
        {
            Some(role) => (role, false),
            None => {
                let role = self
                    .store
                    .set_tenant_login(self.fence()?, &tenant.id, &new_password(), &new_salt())
                    .await
                    .map_err(store_failure)?;
                changes.add(format!("login {role} created"));
                (role, true)
            }
        };
        let team = match &tenant.owner_group {
            Some(group) => Some(self.team(group.as_str(), changes).await?),
            None => None,
        };
        self.folder(&objects, changes).await?;
        self.folder_permissions(&objects, team, changes).await?;
        self.datasource(&objects, &tenant.id, &role, new_login, changes)
            .await?;
        if self.restrict_datasource_access {
            self.datasource_permissions(&objects, team, changes).await?;
        }
        self.dashboard(tenant, &objects, changes).await
    }

    /// The id of the team named `name`, created if there is none.
    async fn team(&self, name: &str, changes: &mut Changes) -> Result<i64, HandlerError> {
        if let Some(id) = self.find_team(name).await? {
            return Ok(id);
        }
        let answer = self
            .client
            .call(
                "create_team",
                Method::POST,
                "api/teams",
                Some(&json!({ "name": name })),
            )
            .await
            .map_err(client_failure)?;
        if answer.ok() {
            if let Some(id) = answer.body.get("teamId").and_then(Value::as_i64) {
                changes.add(format!("team {name:?} created"));
                return Ok(id);
            }
        }
        // Created meanwhile by someone else: use it.
        if answer.status == StatusCode::CONFLICT {
            if let Some(id) = self.find_team(name).await? {
                return Ok(id);
            }
        }
        Err(refused(&format!("create team {name:?}"), &answer))
    }

    async fn find_team(&self, name: &str) -> Result<Option<i64>, HandlerError> {
        let path = format!("api/teams/search?name={}", encode(name));
        let answer = self
            .client
            .call("find_team", Method::GET, &path, None)
            .await
            .map_err(client_failure)?;
        // Some Grafana versions answer a search without a match with 404.
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.ok() {
            return Err(refused(&format!("search team {name:?}"), &answer));
        }
        Ok(answer
            .body
            .get("teams")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|t| t.get("id").and_then(Value::as_i64)))
    }

    async fn folder(&self, o: &TenantObjects, changes: &mut Changes) -> Result<(), HandlerError> {
        let path = format!("api/folders/{}", encode(&o.folder_uid));
        let answer = self
            .client
            .call("get_folder", Method::GET, &path, None)
            .await
            .map_err(client_failure)?;
        if answer.status == StatusCode::NOT_FOUND {
            let created = self
                .client
                .call(
                    "create_folder",
                    Method::POST,
                    "api/folders",
                    Some(&json!({ "uid": o.folder_uid, "title": o.folder_title })),
                )
                .await
                .map_err(client_failure)?;
            if !created.ok() {
                return Err(refused(
                    &format!("create folder {:?}", o.folder_title),
                    &created,
                ));
            }
            changes.add(format!("folder {:?} created", o.folder_uid));
            return Ok(());
        }
        if !answer.ok() {
            return Err(refused(&format!("read folder {:?}", o.folder_uid), &answer));
        }
        if answer.body.get("title").and_then(Value::as_str) != Some(o.folder_title.as_str()) {
            let version = answer.body.get("version").cloned().unwrap_or(Value::Null);
            let updated = self
                .client
                .call(
                    "update_folder",
                    Method::PUT,
                    &path,
                    Some(
                        &json!({ "title": o.folder_title, "version": version, "overwrite": true }),
                    ),
                )
                .await
                .map_err(client_failure)?;
            if !updated.ok() {
                return Err(refused(
                    &format!("rename folder {:?}", o.folder_uid),
                    &updated,
                ));
            }
            changes.add(format!("folder {:?} renamed", o.folder_uid));
        }
        Ok(())
    }

    /// Exactly: the team views (1); no role, user or other team has an entry.
    async fn folder_permissions(
        &self,
        o: &TenantObjects,
        team: Option<i64>,
        changes: &mut Changes,
    ) -> Result<(), HandlerError> {
        let path = format!("api/folders/{}/permissions", encode(&o.folder_uid));
        let answer = self
            .client
            .call("get_folder_permissions", Method::GET, &path, None)
            .await
            .map_err(client_failure)?;
        if !answer.ok() {
            return Err(refused(
                &format!("read the permissions of folder {:?}", o.folder_uid),
                &answer,
            ));
        }
        let held: BTreeSet<(String, i64)> = answer
            .body
            .as_array()
            .into_iter()
            .flatten()
            // Inherited entries come from a parent; the Admin role's is implicit and fixed.
            .filter(|item| item.get("inherited").and_then(Value::as_bool) != Some(true))
            .filter(|item| item.get("role").and_then(Value::as_str) != Some("Admin"))
            .map(|item| {
                let who = if let Some(role) = item
                    .get("role")
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                {
                    format!("role:{role}")
                } else if let Some(team) = item
                    .get("teamId")
                    .and_then(Value::as_i64)
                    .filter(|t| *t > 0)
                {
                    format!("team:{team}")
                } else {
                    format!(
                        "user:{}",
                        item.get("userId").and_then(Value::as_i64).unwrap_or(0)
                    )
                };
                (
                    who,
                    item.get("permission").and_then(Value::as_i64).unwrap_or(0),
                )
            })
            .collect();
        let wanted: BTreeSet<(String, i64)> =
            team.iter().map(|t| (format!("team:{t}"), 1)).collect();
        if held == wanted {
            return Ok(());
        }
        let items: Vec<Value> = team
            .iter()
            .map(|t| json!({ "teamId": t, "permission": 1 }))
            .collect();
        let set = self
            .client
            .call(
                "set_folder_permissions",
                Method::POST,
                &path,
                Some(&json!({ "items": items })),
            )
            .await
            .map_err(client_failure)?;
        if !set.ok() {
            return Err(refused(
                &format!("set the permissions of folder {:?}", o.folder_uid),
                &set,
            ));
        }
        changes.add(format!("folder {:?} permissions set", o.folder_uid));
        Ok(())
    }

    fn datasource_body(&self, o: &TenantObjects, role: &str) -> Value {
        let ds = &self.datasource;
        json!({
            "uid": o.datasource_uid,
            "name": o.datasource_name,
            "type": DATASOURCE_TYPE,
            "access": "proxy",
            "url": ds.host,
            "user": role,
            "database": ds.database,
            "basicAuth": false,
            "isDefault": false,
            "readOnly": true,
            "jsonData": {
                "database": ds.database,
                "sslmode": ds.sslmode,
                "postgresVersion": 1500,
                "maxOpenConns": 5,
                "connMaxLifetime": 14400,
            },
        })
    }

    /// The data source signing in as the tenant's login. A new password whenever the data
    /// source is written: Grafana never shows the one it holds, so a repaired data source and
    /// its login get a new one together.
    async fn datasource(
        &self,
        o: &TenantObjects,
        tenant: &TenantId,
        role: &str,
        new_login: bool,
        changes: &mut Changes,
    ) -> Result<(), HandlerError> {
        let wanted = self.datasource_body(o, role);
        let path = format!("api/datasources/uid/{}", encode(&o.datasource_uid));
        let answer = self
            .client
            .call("get_datasource", Method::GET, &path, None)
            .await
            .map_err(client_failure)?;
        let exists = match answer.status {
            StatusCode::NOT_FOUND => false,
            s if s.is_success() => true,
            _ => {
                return Err(refused(
                    &format!("read data source {:?}", o.datasource_uid),
                    &answer,
                ))
            }
        };
        if exists {
            let held = &answer.body;
            let same = ["name", "type", "url", "user", "access"]
                .iter()
                .all(|k| held.get(*k) == wanted.get(*k))
                && ["database", "sslmode"]
                    .iter()
                    .all(|k| held["jsonData"].get(*k) == wanted["jsonData"].get(*k))
                && held["secureJsonFields"].get("password") == Some(&Value::Bool(true));
            if same && !new_login {
                return Ok(());
            }
        }
        let password = new_password();
        self.store
            .set_tenant_login(self.fence()?, tenant, &password, &new_salt())
            .await
            .map_err(store_failure)?;
        let mut body = wanted;
        body["secureJsonData"] = json!({ "password": password });
        let written = if exists {
            self.client
                .call("update_datasource", Method::PUT, &path, Some(&body))
                .await
        } else {
            self.client
                .call(
                    "create_datasource",
                    Method::POST,
                    "api/datasources",
                    Some(&body),
                )
                .await
        }
        .map_err(client_failure)?;
        if !written.ok() {
            return Err(refused(
                &format!("write data source {:?}", o.datasource_name),
                &written,
            ));
        }
        changes.add(format!(
            "data source {:?} {} with login {role}",
            o.datasource_uid,
            if exists { "repaired" } else { "created" }
        ));
        Ok(())
    }

    /// Only the team may query the data source: the built-in roles Viewer and Editor lose
    /// their default Query permission, other teams theirs.
    async fn datasource_permissions(
        &self,
        o: &TenantObjects,
        team: Option<i64>,
        changes: &mut Changes,
    ) -> Result<(), HandlerError> {
        let base = format!(
            "api/access-control/datasources/{}",
            encode(&o.datasource_uid)
        );
        let answer = self
            .client
            .call("get_datasource_permissions", Method::GET, &base, None)
            .await
            .map_err(client_failure)?;
        if answer.status == StatusCode::NOT_FOUND {
            return Err(HandlerError::new(
                "config",
                format!(
                    "Grafana has no data source permissions API (404 on {base}): Grafana OSS cannot restrict who queries a data source; set grafana.restrict_datasource_access = false to accept that (each data source still reads only its tenant's rows)"
                ),
            ));
        }
        if !answer.ok() {
            return Err(refused(
                &format!("read the permissions of data source {:?}", o.datasource_uid),
                &answer,
            ));
        }
        let mut writes: Vec<(String, &str)> = Vec::new();
        let mut team_has_query = false;
        for item in answer.body.as_array().into_iter().flatten() {
            let permission = item.get("permission").and_then(Value::as_str).unwrap_or("");
            if permission.is_empty()
                || item.get("isInherited").and_then(Value::as_bool) == Some(true)
            {
                continue;
            }
            if let Some(role) = item
                .get("builtInRole")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                if matches!(role, "Viewer" | "Editor") {
                    writes.push((format!("{base}/builtInRoles/{role}"), ""));
                }
            } else if let Some(id) = item
                .get("teamId")
                .and_then(Value::as_i64)
                .filter(|t| *t > 0)
            {
                if Some(id) == team {
                    team_has_query = permission == "Query";
                    if !team_has_query {
                        writes.push((format!("{base}/teams/{id}"), "Query"));
                        team_has_query = true;
                    }
                } else {
                    writes.push((format!("{base}/teams/{id}"), ""));
                }
            }
        }
        if let (Some(id), false) = (team, team_has_query) {
            writes.push((format!("{base}/teams/{id}"), "Query"));
        }
        for (path, permission) in &writes {
            let set = self
                .client
                .call(
                    "set_datasource_permission",
                    Method::POST,
                    path,
                    Some(&json!({ "permission": permission })),
                )
                .await
                .map_err(client_failure)?;
            if !set.ok() {
                return Err(refused(
                    &format!("set a permission of data source {:?}", o.datasource_uid),
                    &set,
                ));
            }
        }
        if !writes.is_empty() {
            changes.add(format!(
                "data source {:?} permissions set",
                o.datasource_uid
            ));
        }
        Ok(())
    }

    async fn dashboard(
        &self,
        tenant: &Tenant,
        o: &TenantObjects,
        changes: &mut Changes,
    ) -> Result<(), HandlerError> {
        let wanted = pinned(&self.template, tenant, o)
            .map_err(|e| HandlerError::new("template", e.to_string()))?;
        let path = format!("api/dashboards/uid/{}", encode(&o.dashboard_uid));
        let answer = self
            .client
            .call("get_dashboard", Method::GET, &path, None)
            .await
            .map_err(client_failure)?;
        match answer.status {
            StatusCode::NOT_FOUND => {}
            s if s.is_success() => {
                let in_folder = answer.body["meta"].get("folderUid").and_then(Value::as_str)
                    == Some(o.folder_uid.as_str());
                if in_folder && same_dashboard(&answer.body["dashboard"], &wanted) {
                    return Ok(());
                }
            }
            _ => {
                return Err(refused(
                    &format!("read dashboard {:?}", o.dashboard_uid),
                    &answer,
                ))
            }
        }
        let saved = self
            .client
            .call(
                "save_dashboard",
                Method::POST,
                "api/dashboards/db",
                Some(&json!({
                    "dashboard": wanted,
                    "folderUid": o.folder_uid,
                    "overwrite": true,
                    "message": format!("budgetd: tenant {}", tenant.id.as_str()),
                })),
            )
            .await
            .map_err(client_failure)?;
        if !saved.ok() {
            return Err(refused(
                &format!("save dashboard {:?}", o.dashboard_uid),
                &saved,
            ));
        }
        changes.add(format!("dashboard {:?} saved", o.dashboard_uid));
        Ok(())
    }

    async fn remove(&self, id: &TenantId, changes: &mut Changes) -> Result<(), HandlerError> {
        let o = TenantObjects::of_id(id);
        for (operation, what, path) in [
            (
                "delete_dashboard",
                "dashboard",
                format!("api/dashboards/uid/{}", encode(&o.dashboard_uid)),
            ),
            (
                "delete_folder",
                "folder",
                format!(
                    "api/folders/{}?forceDeleteRules=true",
                    encode(&o.folder_uid)
                ),
            ),
            (
                "delete_datasource",
                "data source",
                format!("api/datasources/uid/{}", encode(&o.datasource_uid)),
            ),
        ] {
            let answer = self
                .client
                .call(operation, Method::DELETE, &path, None)
                .await
                .map_err(client_failure)?;
            match answer.status {
                StatusCode::NOT_FOUND => {}
                s if s.is_success() => changes.add(format!("{what} of {} deleted", id.as_str())),
                _ => {
                    return Err(refused(
                        &format!("delete the {what} of {}", id.as_str()),
                        &answer,
                    ))
                }
            }
        }
        if self
            .store
            .drop_tenant_login(self.fence()?, id)
            .await
            .map_err(store_failure)?
        {
            changes.add(format!("login of {} dropped", id.as_str()));
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler for GrafanaReconciler {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A tenant's lifecycle events (`tenant.*`); its enforcement and budget events change
    /// nothing in Grafana.
    async fn handle(&self, event: &OutboxEvent) -> Result<(), HandlerError> {
        if event.aggregate_type != "tenant" || !event.event_type.starts_with("tenant.") {
            return Ok(());
        }
        let tenant = TenantId::parse(&event.aggregate_id)
            .map_err(|e| HandlerError::new("invalid", format!("event {}: {e}", event.id)))?;
        let changes = self.reconcile(&tenant).await?;
        if !changes.is_empty() {
            tracing::info!(tenant = %tenant, %changes, "Grafana reconciled");
        }
        Ok(())
    }

    /// A resync: what it changes is drift (someone changed Grafana, or an event was missed).
    async fn converge(&self, tenant: &TenantId) -> Result<(), HandlerError> {
        let changes = self.reconcile(tenant).await?;
        if !changes.is_empty() {
            metrics::counter!("budgetd_grafana_drift_repaired_total").increment(1);
            tracing::warn!(tenant = %tenant, %changes, "Grafana drift repaired");
        }
        Ok(())
    }
}
