//! The REST surface: URL routing, discovery documents, the verbs, watch streaming and Table
//! output, all answering errors as `kind: Status`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::errors::ApiError;
use super::protobuf::{self, ProtobufError};
use super::registry::ResourceType;
use super::selectors::Selector;
use super::store::{DeleteOptions, Filter, PatchKind, Store, Subresource, filter_change};
use super::table;

/// Largest request body accepted.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Shared state of the HTTP handlers.
pub struct App {
    /// The objects.
    pub store: Arc<Store>,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Print one line per request to stderr.
    pub log_requests: bool,
}

/// The router serving the whole API.
pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle).with_state(app)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status())
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return error_response(&ApiError::bad_request(format!(
                "reading the request body: {e}"
            )));
        }
    };
    let query: Vec<(String, String)> =
        match Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
            Ok(Query(q)) => q,
            Err(e) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid query string: {e}"
                )));
            }
        };
    let q: BTreeMap<String, String> = query.into_iter().filter(|(k, _)| !k.is_empty()).collect();
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        query: q,
        body: bytes,
    };
    let resp = match route(&app, &req) {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    };
    if app.log_requests {
        eprintln!(
            "fake-apiserver: {} {}?{} ct={:?} accept={:?} -> {}",
            req.method,
            req.path,
            parts.uri.query().unwrap_or(""),
            req.header(header::CONTENT_TYPE),
            req.header(header::ACCEPT),
            resp.status().as_u16()
        );
    }
    resp
}

struct Req {
    method: Method,
    path: String,
    headers: HeaderMap,
    query: BTreeMap<String, String>,
    body: Bytes,
}

impl Req {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.query.get(name).map(String::as_str), Some("true" | "1"))
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn wants_metadata_only(&self) -> bool {
        self.header(header::ACCEPT)
            .contains("as=PartialObjectMetadata")
    }

    fn wants_table(&self) -> bool {
        self.header(header::ACCEPT).contains("as=Table")
    }

    /// The field manager: the `fieldManager` parameter, else the client's user agent name.
    fn manager(&self) -> String {
        if let Some(m) = self.param("fieldManager") {
            return m.to_string();
        }
        let ua = self.header(header::USER_AGENT);
        let name = ua.split(['/', ' ']).next().unwrap_or("");
        if name.is_empty() {
            "unknown".to_string()
        } else {
            name.to_string()
        }
    }

    fn body_value(&self) -> Result<Value, ApiError> {
        let ct = self.header(header::CONTENT_TYPE);
        if ct.contains("protobuf") {
            return protobuf::decode(&self.body).map_err(|e| match e {
                ProtobufError::Unsupported(_) => ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType",
                    message: e.to_string(),
                    details: None,
                },
                other => ApiError::bad_request(other.to_string()),
            });
        }
        if ct.contains("cbor") {
            return Err(ApiError::unsupported_media_type(ct));
        }
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("the request body is empty"));
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v) => Ok(v),
            Err(json_err) => {
                if self.header(header::CONTENT_TYPE).contains("yaml") {
                    serde_yaml::from_slice::<Value>(&self.body).map_err(|e| {
                        ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
                    })
                } else {
                    Err(ApiError::bad_request(format!(
                        "the request body is not valid JSON: {json_err}"
                    )))
                }
            }
        }
    }

    fn filter(&self, ns: Option<&str>) -> Result<Filter, ApiError> {
        let labels = Selector::parse_labels(self.param("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = Selector::parse_fields(self.param("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Filter {
            namespace: ns.map(str::to_string),
            labels,
            fields,
        })
    }
}

fn route(app: &App, req: &Req) -> Result<Response, ApiError> {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let discovery = |v: Value| -> Result<Response, ApiError> {
        if req.method != Method::GET {
            return Err(ApiError::method_not_allowed(req.method.as_str(), &req.path));
        }
        Ok(json_response(StatusCode::OK, &v))
    };
    match segs.as_slice() {
        [] => discovery(
            json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]}),
        ),
        ["version"] => discovery(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-rimir-fake", "gitCommit": "0000000",
            "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
            "compiler": "gc", "platform": "linux/amd64"
        })),
        ["healthz" | "livez" | "readyz", ..] => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
        }
        ["api"] => discovery(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": req.header(header::HOST)}]
        })),
        ["api", "v1"] => discovery(resource_list(&app.store.types(), "", "v1")),
        ["apis"] => discovery(group_list(&app.store.types())),
        ["apis", group] => {
            let groups = group_list(&app.store.types());
            let found = groups["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == *group).cloned())
                .ok_or_else(|| ApiError::no_route(&req.path))?;
            let mut g = found;
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            discovery(g)
        }
        ["apis", group, version] => {
            let types = app.store.types();
            if !types.iter().any(|t| t.group == *group && t.serves(version)) {
                return Err(ApiError::no_route(&req.path));
            }
            discovery(resource_list(&types, group, version))
        }
        ["openapi", "v2"] if req.header(header::ACCEPT).contains("protobuf") => {
            let ct = "application/octet-stream";
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, ct)],
                openapi_v2_protobuf(),
            )
                .into_response())
        }
        ["openapi", "v3"] => discovery(openapi_root(&app.store.types())),
        ["openapi", "v3", "api", "v1"] => {
            discovery(openapi_group_version(&app.store.types(), "", "v1"))
        }
        ["openapi", "v3", "apis", group, version] => {
            let types = app.store.types();
            if !types.iter().any(|t| t.group == *group && t.serves(version)) {
                return Err(ApiError::no_route(&req.path));
            }
            discovery(openapi_group_version(&types, group, version))
        }
        ["api", "v1", rest @ ..] => resource_request(app, req, "", "v1", rest),
        ["apis", group, version, rest @ ..] => resource_request(app, req, group, version, rest),
        _ => Err(ApiError::no_route(&req.path)),
    }
}

/// An OpenAPI v2 document with no definitions, protobuf-encoded (gnostic `Document`:
/// `swagger` = 1, `info` = 2 with `title` = 1, `version` = 2). Older kubectl (1.20, Debian's)
/// downloads it before validating client-side; with no definitions every type passes there and
/// the server validates instead.
fn openapi_v2_protobuf() -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2);
        let mut len = bytes.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes (rimir fake)");
    field(&mut info, 2, b"v1.33.0");
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    doc
}

/// The OpenAPI v3 root: one document per group/version. kubectl reads it to learn that the
/// server validates fields itself (`fieldValidation`), so it skips client-side schemas.
fn openapi_root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for t in types {
        for v in &t.versions {
            let key = if t.group.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{}/{v}", t.group)
            };
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// A minimal OpenAPI v3 document for one group/version: the item paths of every resource
/// with their GVK and query parameters; no schemas.
fn openapi_group_version(types: &[ResourceType], group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let params: Vec<Value> = ["fieldValidation", "fieldManager", "force", "dryRun"]
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.serves(version))
    {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let ns = if t.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let gvk = json!({"group": group, "version": version, "kind": t.kind});
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            format!("{prefix}{ns}/{}/{{name}}", t.plural),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        paths.insert(
            format!("{prefix}{ns}/{}", t.plural),
            json!({"get": op("list"), "post": op("post")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (rimir fake)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Value {
    let resources: Vec<Value> = types
        .iter()
        .filter(|t| t.group == group && t.serves(version))
        .flat_map(ResourceType::discovery_entries)
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn group_list(types: &[ResourceType]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        let idx = match groups.iter().position(|(g, _)| *g == t.group) {
            Some(i) => i,
            None => {
                groups.push((t.group.clone(), Vec::new()));
                groups.len() - 1
            }
        };
        for v in &t.versions {
            if !groups[idx].1.contains(v) {
                groups[idx].1.push(v.clone());
            }
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            let preferred = vs.first().cloned().unwrap_or_default();
            json!({"name": g, "versions": vs, "preferredVersion": preferred})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Sets `apiVersion` to the version the client asked for, or reduces the object to
/// `PartialObjectMetadata` when the client asked for metadata only.
fn as_version(mut obj: Value, rt: &ResourceType, version: &str, meta_only: bool) -> Value {
    if meta_only {
        return json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_default(),
        });
    }
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(rt.api_version(version)));
    }
    obj
}

/// An object as a watch event carries it: a one-row Table for `kubectl get -w`, metadata only,
/// or whole.
fn watch_object(
    obj: Value,
    rt: &ResourceType,
    version: &str,
    meta_only: bool,
    as_table: bool,
) -> Value {
    if as_table {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return table::to_table(rt, &[obj], rv);
    }
    as_version(obj, rt, version, meta_only)
}

/// `kind` and `apiVersion` of a list.
fn list_type(rt: &ResourceType, version: &str, meta_only: bool) -> (String, String) {
    if meta_only {
        ("PartialObjectMetadataList".into(), "meta.k8s.io/v1".into())
    } else {
        (format!("{}List", rt.kind), rt.api_version(version))
    }
}

struct Target<'a> {
    rt: ResourceType,
    version: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    sub: Subresource,
}

fn resource_request(
    app: &App,
    req: &Req,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (namespace, tail) = match rest {
        ["namespaces", ns, plural, t @ ..]
            if !(t.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            let mut tail = vec![*plural];
            tail.extend_from_slice(t);
            (Some(*ns), tail)
        }
        r => (None, r.to_vec()),
    };
    let (plural, name, sub) = match tail.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return Err(ApiError::no_route(&req.path)),
    };
    let rt = app
        .store
        .resolve(group, version, plural)
        .ok_or_else(|| ApiError::no_route(&req.path))?;
    if (namespace.is_some() && !rt.namespaced)
        || (name.is_some() && rt.namespaced && namespace.is_none())
    {
        return Err(ApiError::no_route(&req.path));
    }
    let sub = match sub {
        None => Subresource::Main,
        Some("status") if rt.status_subresource => Subresource::Status,
        Some(_) => return Err(ApiError::no_route(&req.path)),
    };
    if req.param("dryRun").is_some() {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the fake API server",
        ));
    }
    let t = Target {
        rt,
        version,
        namespace,
        name,
        sub,
    };
    let store = &app.store;
    let ns = t.namespace.unwrap_or("");
    let out = |code: StatusCode, obj: Value| -> Result<Response, ApiError> {
        Ok(json_response(
            code,
            &as_version(obj, &t.rt, t.version, req.wants_metadata_only()),
        ))
    };
    match (&req.method, t.name) {
        (&Method::GET, None) if watch_path || req.flag("watch") => watch(app, req, &t),
        (&Method::GET, None) => list(store, req, &t),
        (&Method::GET, Some(name)) => {
            let obj = store.get(&t.rt, ns, name)?;
            if req.wants_table() {
                let rv = store.current_rv();
                return Ok(json_response(
                    StatusCode::OK,
                    &table::to_table(&t.rt, &[obj], rv),
                ));
            }
            out(StatusCode::OK, obj)
        }
        (&Method::POST, None) if t.sub == Subresource::Main => {
            let body = req.body_value()?;
            out(
                StatusCode::CREATED,
                store.create(&t.rt, ns, body, &req.manager())?,
            )
        }
        (&Method::PUT, Some(name)) => {
            let body = req.body_value()?;
            out(
                StatusCode::OK,
                store.update(&t.rt, ns, name, body, t.sub, &req.manager())?,
            )
        }
        (&Method::PATCH, Some(name)) => {
            let ct = req.header(header::CONTENT_TYPE);
            let media = ct.split(';').next().unwrap_or("").trim();
            let kind = match media {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/json-patch+json" => PatchKind::Json,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" => PatchKind::Apply,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let body = req.body_value()?;
            let existed = kind != PatchKind::Apply || store.get(&t.rt, ns, name).is_ok();
            let obj = store.patch(
                &t.rt,
                ns,
                name,
                kind,
                &body,
                t.sub,
                &req.manager(),
                req.flag("force"),
            )?;
            out(
                if existed {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                obj,
            )
        }
        (&Method::DELETE, Some(name)) if t.sub == Subresource::Main => {
            let opts = delete_options(req)?;
            out(StatusCode::OK, store.delete(&t.rt, ns, name, &opts)?)
        }
        (&Method::DELETE, None) => {
            let opts = delete_options(req)?;
            let filter = req.filter(t.namespace)?;
            let items: Vec<Value> = store
                .delete_collection(&t.rt, &filter, &opts)
                .into_iter()
                .map(|o| as_version(o, &t.rt, t.version, req.wants_metadata_only()))
                .collect();
            let (kind, api_version) = list_type(&t.rt, t.version, req.wants_metadata_only());
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": store.current_rv().to_string()},
                    "items": items,
                }),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str(), &req.path)),
    }
}

fn delete_options(req: &Req) -> Result<DeleteOptions, ApiError> {
    let body = if req.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        req.body_value()?
    };
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    Ok(DeleteOptions {
        propagation: s(body.get("propagationPolicy"))
            .or_else(|| req.param("propagationPolicy").map(str::to_string)),
        uid: s(body.pointer("/preconditions/uid")),
        resource_version: s(body.pointer("/preconditions/resourceVersion")),
    })
}

fn list(store: &Store, req: &Req, t: &Target<'_>) -> Result<Response, ApiError> {
    let filter = req.filter(t.namespace)?;
    let limit = match req.param("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    let page = store.list(&t.rt, &filter, limit, req.param("continue"))?;
    if req.wants_table() {
        let mut tbl = table::to_table(&t.rt, &page.items, page.rv);
        if let Some(c) = page.continue_token {
            tbl["metadata"]["continue"] = json!(c);
        }
        return Ok(json_response(StatusCode::OK, &tbl));
    }
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|o| as_version(o, &t.rt, t.version, req.wants_metadata_only()))
        .collect();
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(c) = page.continue_token {
        meta["continue"] = json!(c);
    }
    let (kind, api_version) = list_type(&t.rt, t.version, req.wants_metadata_only());
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": meta,
            "items": items,
        }),
    ))
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(app: &App, req: &Req, t: &Target<'_>) -> Result<Response, ApiError> {
    let filter = req.filter(t.namespace)?;
    let rv = match req.param("resourceVersion") {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))?,
        ),
    };
    let initial = req.flag("sendInitialEvents");
    let meta_only = req.wants_metadata_only();
    let as_table = req.wants_table();
    let bookmarks = req.flag("allowWatchBookmarks");
    let timeout = match req.param("timeoutSeconds") {
        // Capped at a day so that the deadline never overflows.
        Some(s) => Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?
                .min(86_400),
        ),
        None => Duration::from_secs(1800),
    };
    let rt = t.rt.clone();
    let version = t.version.to_string();
    let bookmark = move |rv: u64, end: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": rt.kind, "apiVersion": rt.api_version(&version), "metadata": meta}),
        )
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let start = match app.store.watch(&t.rt, &filter, rv, initial) {
        Ok(s) => s,
        Err(e) if e.code == 410 => {
            // Like a real server: the watch opens, then reports 410 Expired as an ERROR event.
            let line = event_line("ERROR", &e.to_status());
            return Ok(stream_response(futures::stream::once(async move {
                Ok::<_, Infallible>(line)
            })));
        }
        Err(e) => return Err(e),
    };
    let rt = t.rt.clone();
    let version = t.version.to_string();
    let key = (rt.group.clone(), rt.plural.clone());
    let interval = app.bookmark_interval;
    tokio::spawn(async move {
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(b).await.is_ok() }
        };
        for (ev, obj) in start.backlog {
            if !send(event_line(
                ev.as_str(),
                &watch_object(obj, &rt, &version, meta_only, as_table),
            ))
            .await
            {
                return;
            }
        }
        if initial && bookmarks && !send(bookmark(start.rv, true)).await {
            return;
        }
        let mut live = start.live;
        let mut last_rv = start.rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(change) => {
                        if change.rv <= last_rv {
                            continue;
                        }
                        last_rv = change.rv;
                        if change.type_key != key {
                            continue;
                        }
                        if let Some((ev, obj)) = filter_change(&change, &filter)
                            && !send(event_line(ev.as_str(), &watch_object(obj, &rt, &version, meta_only, as_table))).await
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::expired(last_rv, last_rv);
                        let _ = send(event_line("ERROR", &e.to_status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    if !send(bookmark(last_rv, false)).await {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(stream_response(stream))
}

fn stream_response<S>(stream: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
