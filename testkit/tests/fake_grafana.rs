//! The fake Grafana API through a real HTTP client: auth, each endpoint's answers, the
//! conflict and precondition cases, permission replacement, cascades and faults.

use reqwest::Method;
use serde_json::{json, Value};
use testkit::fake_grafana::{
    DatasourcePermission, FakeGrafana, Fault, FolderPermission, EDIT, VIEW,
};

const TOKEN: &str = "glsa_test";

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(fake: &FakeGrafana) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap(),
            base: fake.url(),
            token: TOKEN.to_owned(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the fake answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, None).await
    }
}

#[tokio::test]
async fn every_api_call_but_health_needs_the_bearer_token() {
    let fake = FakeGrafana::start(TOKEN).await;
    let mut api = Api::new(&fake);
    let (status, health) = api.get("/api/health").await;
    assert_eq!((status, &health["database"]), (200, &json!("ok")));
    assert!(health["version"].as_str().unwrap().starts_with("11."));

    api.token = "wrong".to_owned();
    let (status, body) = api
        .post("/api/folders", json!({ "uid": "a", "title": "A" }))
        .await;
    assert_eq!((status, body), (401, json!({ "message": "Unauthorized" })));
    let unauthenticated = reqwest::get(format!("{}/api/folders", fake.url()))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    assert!(fake.folders().is_empty());
    assert_eq!(fake.writes().len(), 1);
    assert_eq!(fake.writes()[0].status, 401);
    fake.shutdown().await;
}

#[tokio::test]
async fn folders_are_created_listed_updated_with_versions_and_unique() {
    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    let (status, created) = api
        .post("/api/folders", json!({ "uid": "t-acme", "title": "Acme" }))
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        (created["uid"].as_str(), created["version"].as_u64()),
        (Some("t-acme"), Some(1))
    );
    let (_, other) = api
        .post("/api/folders", json!({ "uid": "t-beta", "title": "Beta" }))
        .await;
    assert!(other["id"].as_u64() > created["id"].as_u64());

    let (status, _) = api
        .post("/api/folders", json!({ "uid": "t-acme", "title": "Other" }))
        .await;
    assert_eq!(status, 409, "uid taken");
    let (status, _) = api
        .post("/api/folders", json!({ "uid": "t-new", "title": "Acme" }))
        .await;
    assert_eq!(status, 409, "title taken at the root");
    let (status, nested) = api
        .post(
            "/api/folders",
            json!({ "uid": "t-sub", "title": "Acme", "parentUid": "t-beta" }),
        )
        .await;
    assert_eq!(status, 200, "the same title under another parent: {nested}");
    assert_eq!(nested["parentUid"], "t-beta");
    let (status, _) = api
        .post("/api/folders", json!({ "uid": "t-x", "title": "" }))
        .await;
    assert_eq!(status, 400);
    let (status, body) = api
        .post("/api/folders", json!({ "uid": "t.x", "title": "X" }))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api
        .post(
            "/api/folders",
            json!({ "uid": "x".repeat(41), "title": "X" }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(fake.folders().len(), 3, "refused creates change nothing");

    let (_, root) = api.get("/api/folders").await;
    let titles: Vec<&str> = root
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Acme", "Beta"]);
    let (_, second_page) = api.get("/api/folders?limit=1&page=2").await;
    assert_eq!(second_page[0]["uid"], "t-beta");
    let (_, children) = api.get("/api/folders?parentUid=t-beta").await;
    assert_eq!(children.as_array().unwrap().len(), 1);

    let (status, body) = api.get("/api/folders/missing").await;
    assert_eq!(
        (status, body),
        (404, json!({ "message": "folder not found" }))
    );

    let (status, stale) = api
        .put(
            "/api/folders/t-acme",
            json!({ "title": "Acme Corp", "version": 7 }),
        )
        .await;
    assert_eq!(
        (status, &stale["status"]),
        (412, &json!("version-mismatch"))
    );
    let (status, updated) = api
        .put(
            "/api/folders/t-acme",
            json!({ "title": "Acme Corp", "version": 1 }),
        )
        .await;
    assert_eq!((status, updated["version"].as_u64()), (200, Some(2)));
    let (status, _) = api
        .put(
            "/api/folders/t-acme",
            json!({ "title": "Beta", "overwrite": true }),
        )
        .await;
    assert_eq!(status, 409, "renaming onto a sibling's title");
    let (status, forced) = api
        .put(
            "/api/folders/t-acme",
            json!({ "title": "Acme", "overwrite": true }),
        )
        .await;
    assert_eq!((status, forced["version"].as_u64()), (200, Some(3)));
    assert_eq!(fake.folder("t-acme").unwrap().title, "Acme");
    fake.shutdown().await;
}

#[tokio::test]
async fn folder_permissions_start_with_the_role_defaults_and_a_post_replaces_them() {
    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    api.post("/api/folders", json!({ "uid": "t-acme", "title": "Acme" }))
        .await;
    assert_eq!(
        fake.folder_permissions("t-acme").unwrap(),
        [
            FolderPermission::role("Editor", EDIT),
            FolderPermission::role("Viewer", VIEW)
        ]
    );
    let (_, listed) = api.get("/api/folders/t-acme/permissions").await;
    let roles: Vec<(&str, u64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["role"].as_str().unwrap(),
                p["permission"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(roles, [("Admin", 4), ("Editor", 2), ("Viewer", 1)]);

    let team = fake.create_team("acme-owners");
    let (status, _) = api
        .post(
            "/api/folders/t-acme/permissions",
            json!({ "items": [{ "teamId": team + 1, "permission": 1 }] }),
        )
        .await;
    assert_eq!(status, 400, "unknown team");
    let (status, _) = api
        .post(
            "/api/folders/t-acme/permissions",
            json!({ "items": [{ "teamId": team, "permission": 3 }] }),
        )
        .await;
    assert_eq!(status, 400, "no such level");
    assert_eq!(
        fake.folder_permissions("t-acme").unwrap().len(),
        2,
        "a refused post changes nothing"
    );

    let (status, body) = api
        .post(
            "/api/folders/t-acme/permissions",
            json!({ "items": [{ "teamId": team, "permission": 1 }] }),
        )
        .await;
    assert_eq!(
        (status, &body["message"]),
        (200, &json!("Folder permissions updated"))
    );
    assert_eq!(
        fake.folder_permissions("t-acme").unwrap(),
        [FolderPermission::team(team, VIEW)]
    );
    let (_, listed) = api.get("/api/folders/t-acme/permissions").await;
    assert_eq!(listed[1]["team"], "acme-owners");
    assert_eq!(listed[1]["permissionName"], "View");

    // Drift: an administrator grants Viewers access again behind the reconciler's back.
    fake.set_folder_permissions(
        "t-acme",
        &[
            FolderPermission::team(team, VIEW),
            FolderPermission::role("Viewer", VIEW),
        ],
    );
    let (_, listed) = api.get("/api/folders/t-acme/permissions").await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert_eq!(listed[2]["role"], "Viewer");

    assert!(fake.delete_team(team));
    assert_eq!(
        fake.folder_permissions("t-acme").unwrap(),
        [FolderPermission::role("Viewer", VIEW)],
        "a deleted team's entries go with it"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn dashboards_are_saved_with_versions_read_searched_and_deleted() {
    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    let board = |version: Option<u64>| {
        let mut d = json!({ "uid": "cost-acme", "title": "Tenant cost", "tags": ["budgetd"], "panels": [] });
        if let Some(v) = version {
            d["version"] = json!(v);
        }
        d
    };
    let (status, _) = api
        .post(
            "/api/dashboards/db",
            json!({ "dashboard": board(None), "folderUid": "missing" }),
        )
        .await;
    assert_eq!(status, 400, "the folder must exist");
    fake.create_folder("t-acme", "Acme");

    let (status, saved) = api
        .post(
            "/api/dashboards/db",
            json!({ "dashboard": board(None), "folderUid": "t-acme", "message": "m" }),
        )
        .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(
        (saved["status"].as_str(), saved["version"].as_u64()),
        (Some("success"), Some(1))
    );
    assert_eq!(saved["url"], "/d/cost-acme/tenant-cost");

    let (status, stale) = api
        .post(
            "/api/dashboards/db",
            json!({ "dashboard": board(None), "folderUid": "t-acme" }),
        )
        .await;
    assert_eq!(
        (status, &stale["status"]),
        (412, &json!("version-mismatch"))
    );
    let (status, next) = api
        .post(
            "/api/dashboards/db",
            json!({ "dashboard": board(Some(1)), "folderUid": "t-acme" }),
        )
        .await;
    assert_eq!((status, next["version"].as_u64()), (200, Some(2)));
    let (status, forced) = api
        .post(
            "/api/dashboards/db",
            json!({ "dashboard": board(None), "folderUid": "t-acme", "overwrite": true }),
        )
        .await;
    assert_eq!(
        (status, forced["version"].as_u64(), &forced["id"]),
        (200, Some(3), &saved["id"])
    );

    let mut same_title = board(None);
    same_title["uid"] = json!("another");
    let (status, clash) = api
        .post(
            "/api/dashboards/db",
            json!({ "dashboard": same_title, "folderUid": "t-acme" }),
        )
        .await;
    assert_eq!((status, &clash["status"]), (412, &json!("name-exists")));

    let (status, got) = api.get("/api/dashboards/uid/cost-acme").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&got["dashboard"]["version"], &got["dashboard"]["tags"]),
        (&json!(3), &json!(["budgetd"]))
    );
    assert_eq!(
        (&got["meta"]["folderUid"], &got["meta"]["folderTitle"]),
        (&json!("t-acme"), &json!("Acme"))
    );
    assert_eq!(
        fake.dashboard("cost-acme").unwrap().folder_uid.as_deref(),
        Some("t-acme")
    );

    let (_, hits) = api
        .get("/api/search?type=dash-db&folderUIDs=t-acme&query=cost")
        .await;
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(
        (&hits[0]["uid"], &hits[0]["folderUid"], &hits[0]["type"]),
        (&json!("cost-acme"), &json!("t-acme"), &json!("dash-db"))
    );
    let (_, none) = api.get("/api/search?type=dash-db&folderUIDs=t-other").await;
    assert_eq!(none, json!([]));

    fake.edit_dashboard("cost-acme", |d| d["title"] = json!("Edited"));
    let (_, got) = api.get("/api/dashboards/uid/cost-acme").await;
    assert_eq!(
        (&got["dashboard"]["title"], &got["meta"]["version"]),
        (&json!("Edited"), &json!(4))
    );

    let (status, _) = api.delete("/api/dashboards/uid/cost-acme").await;
    assert_eq!(status, 200);
    let (status, body) = api.get("/api/dashboards/uid/cost-acme").await;
    assert_eq!(
        (status, body),
        (404, json!({ "message": "Dashboard not found" }))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn deleting_a_folder_takes_its_dashboards_and_subfolders() {
    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    fake.create_folder("t-acme", "Acme");
    fake.create_folder("t-beta", "Beta");
    api.post(
        "/api/folders",
        json!({ "uid": "t-sub", "title": "Sub", "parentUid": "t-acme" }),
    )
    .await;
    for (uid, folder) in [("a", "t-acme"), ("s", "t-sub"), ("b", "t-beta")] {
        let dashboard = json!({ "dashboard": { "uid": uid, "title": uid }, "folderUid": folder });
        assert_eq!(api.post("/api/dashboards/db", dashboard).await.0, 200);
    }
    let (status, body) = api
        .delete("/api/folders/t-acme?forceDeleteRules=false")
        .await;
    assert_eq!((status, &body["message"]), (200, &json!("Folder deleted")));
    let left: Vec<String> = fake.dashboards().into_iter().map(|d| d.uid).collect();
    assert_eq!(left, ["b"]);
    let folders: Vec<String> = fake.folders().into_iter().map(|f| f.uid).collect();
    assert_eq!(folders, ["t-beta"]);
    assert_eq!(api.delete("/api/folders/t-acme").await.0, 404);
    fake.shutdown().await;
}

#[tokio::test]
async fn teams_are_created_searched_by_exact_name_or_substring_and_deleted() {
    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    let (status, created) = api
        .post(
            "/api/teams",
            json!({ "name": "acme-owners", "email": "o@acme.test" }),
        )
        .await;
    assert_eq!((status, &created["message"]), (200, &json!("Team created")));
    let id = created["teamId"].as_u64().unwrap();
    fake.create_team("acme-owners-2");
    assert_eq!(
        api.post("/api/teams", json!({ "name": "acme-owners" }))
            .await
            .0,
        409
    );
    assert_eq!(
        api.post("/api/teams", json!({ "email": "x@y" })).await.0,
        400
    );

    let (_, exact) = api.get("/api/teams/search?name=acme-owners").await;
    assert_eq!(
        (exact["totalCount"].as_u64(), &exact["teams"][0]["id"]),
        (Some(1), &json!(id))
    );
    assert_eq!(exact["teams"][0]["memberCount"], 0);
    let (_, sub) = api.get("/api/teams/search?query=OWNERS").await;
    assert_eq!(sub["totalCount"], 2);
    let (_, missing) = api.get("/api/teams/search?name=nobody").await;
    assert_eq!(missing["teams"], json!([]));

    let (status, team) = api.get(&format!("/api/teams/{id}")).await;
    assert_eq!((status, &team["email"]), (200, &json!("o@acme.test")));
    assert_eq!(api.delete(&format!("/api/teams/{id}")).await.0, 200);
    assert_eq!(api.get(&format!("/api/teams/{id}")).await.0, 404);
    let names: Vec<String> = fake.teams().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["acme-owners-2"]);
    fake.shutdown().await;
}

fn postgres_datasource(uid: &str, name: &str, password: &str) -> Value {
    json!({
        "uid": uid, "name": name, "type": "grafana-postgresql-datasource", "access": "proxy",
        "url": "127.0.0.1:5432", "user": "budgetd_tenant_acme", "database": "budgetd",
        "jsonData": { "sslmode": "disable", "database": "budgetd" },
        "secureJsonData": { "password": password },
    })
}

#[tokio::test]
async fn datasources_keep_their_secret_hidden_and_unique() {
    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    let (status, created) = api
        .post(
            "/api/datasources",
            postgres_datasource("ds-acme", "acme", "s3cret"),
        )
        .await;
    assert_eq!(
        (status, &created["message"]),
        (200, &json!("Datasource added"))
    );
    assert_eq!(
        created["datasource"]["secureJsonFields"],
        json!({ "password": true })
    );
    assert!(!created.to_string().contains("s3cret"));
    assert_eq!(
        api.post(
            "/api/datasources",
            postgres_datasource("ds-acme", "other", "x")
        )
        .await
        .0,
        409
    );
    assert_eq!(
        api.post(
            "/api/datasources",
            postgres_datasource("ds-other", "acme", "x")
        )
        .await
        .0,
        409
    );

    let (status, got) = api.get("/api/datasources/uid/ds-acme").await;
    assert_eq!(
        (status, &got["user"], &got["jsonData"]["sslmode"]),
        (200, &json!("budgetd_tenant_acme"), &json!("disable"))
    );
    assert!(got.get("secureJsonData").is_none() && !got.to_string().contains("s3cret"));
    assert_eq!(
        fake.datasource("ds-acme").unwrap().secure_json_data["password"],
        "s3cret"
    );

    let mut changed = postgres_datasource("ds-acme", "acme", "unused");
    changed["url"] = json!("db.internal:5432");
    changed.as_object_mut().unwrap().remove("secureJsonData");
    let (status, updated) = api.put("/api/datasources/uid/ds-acme", changed).await;
    assert_eq!(
        (status, &updated["datasource"]["version"]),
        (200, &json!(2))
    );
    let stored = fake.datasource("ds-acme").unwrap();
    assert_eq!(
        (
            stored.settings["url"].as_str(),
            stored.secure_json_data["password"].as_str()
        ),
        (Some("db.internal:5432"), "s3cret")
    );
    let (status, _) = api
        .put(
            "/api/datasources/uid/ds-acme",
            postgres_datasource("ds-acme", "acme", "n3w"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        fake.datasource("ds-acme").unwrap().secure_json_data["password"],
        "n3w"
    );

    let (_, all) = api.get("/api/datasources").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(api.delete("/api/datasources/uid/ds-acme").await.0, 200);
    let (status, body) = api.get("/api/datasources/uid/ds-acme").await;
    assert_eq!(
        (status, body),
        (404, json!({ "message": "Data source not found" }))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn datasource_permissions_are_enterprise_only_and_set_per_team_and_role() {
    let oss = FakeGrafana::start_oss(TOKEN).await;
    let api = Api::new(&oss);
    api.post(
        "/api/datasources",
        postgres_datasource("ds-acme", "acme", "p"),
    )
    .await;
    assert_eq!(
        api.get("/api/access-control/datasources/ds-acme").await.0,
        404
    );
    let (status, _) = api
        .post(
            "/api/access-control/datasources/ds-acme/builtInRoles/Viewer",
            json!({ "permission": "" }),
        )
        .await;
    assert_eq!(status, 404);
    oss.shutdown().await;

    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    api.post(
        "/api/datasources",
        postgres_datasource("ds-acme", "acme", "p"),
    )
    .await;
    let role = |r: &str| DatasourcePermission {
        team_id: None,
        built_in_role: Some(r.to_owned()),
        permission: "Query".to_owned(),
    };
    assert_eq!(
        fake.datasource_permissions("ds-acme").unwrap(),
        [role("Editor"), role("Viewer")]
    );
    let team = fake.create_team("acme-owners");

    let base = "/api/access-control/datasources/ds-acme";
    assert_eq!(
        api.post(
            &format!("{base}/teams/{}", team + 5),
            json!({ "permission": "Query" })
        )
        .await
        .0,
        400
    );
    assert_eq!(
        api.post(
            &format!("{base}/teams/{team}"),
            json!({ "permission": "Read" })
        )
        .await
        .0,
        400
    );
    let (status, body) = api
        .post(
            &format!("{base}/teams/{team}"),
            json!({ "permission": "Query" }),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({ "message": "Permission updated" }))
    );
    for r in ["Viewer", "Editor"] {
        let (status, body) = api
            .post(
                &format!("{base}/builtInRoles/{r}"),
                json!({ "permission": "" }),
            )
            .await;
        assert_eq!(
            (status, body),
            (200, json!({ "message": "Permission removed" }))
        );
    }
    let only_team = DatasourcePermission {
        team_id: Some(team),
        built_in_role: None,
        permission: "Query".to_owned(),
    };
    assert_eq!(fake.datasource_permissions("ds-acme").unwrap(), [only_team]);
    let (_, listed) = api.get(base).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        (
            &listed[0]["teamId"],
            &listed[0]["team"],
            &listed[0]["permission"]
        ),
        (&json!(team), &json!("acme-owners"), &json!("Query"))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn injected_faults_fail_matching_calls_and_run_out() {
    let fake = FakeGrafana::start(TOKEN).await;
    let api = Api::new(&fake);
    fake.inject(
        Fault::next(2, 503)
            .method("POST")
            .path_contains("/api/folders"),
    );
    let folder = json!({ "uid": "t-acme", "title": "Acme" });
    assert_eq!(
        api.get("/api/folders").await.0,
        200,
        "another method passes"
    );
    assert_eq!(api.post("/api/folders", folder.clone()).await.0, 503);
    assert_eq!(api.post("/api/folders", folder.clone()).await.0, 503);
    assert!(fake.folders().is_empty(), "a failed call changes nothing");
    assert_eq!(api.post("/api/folders", folder.clone()).await.0, 200);

    fake.inject(Fault::always(500).path_contains("/api/teams"));
    assert_eq!(api.post("/api/teams", json!({ "name": "x" })).await.0, 500);
    assert_eq!(api.post("/api/teams", json!({ "name": "x" })).await.0, 500);
    fake.clear_faults();
    assert_eq!(api.post("/api/teams", json!({ "name": "x" })).await.0, 200);

    let statuses: Vec<(String, u16)> = fake
        .writes()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("/api/folders".to_owned(), 503),
            ("/api/folders".to_owned(), 503),
            ("/api/folders".to_owned(), 200),
            ("/api/teams".to_owned(), 500),
            ("/api/teams".to_owned(), 500),
            ("/api/teams".to_owned(), 200),
        ]
    );
    assert_eq!(fake.requests().len(), 7);
    fake.shutdown().await;
}
