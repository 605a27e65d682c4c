//! The object store: every object of every type under one lock, a global resourceVersion
//! counter, the event history that watches resume from, and the server-side behaviours that
//! happen on write (generation, status subresource, managedFields, finalizers, garbage
//! collection, CRD registration, namespace termination).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::clock;
use super::errors::ApiError;
use super::patch::{self, FieldPath, FieldSet};
use super::protobuf;
use super::registry::{self, ResourceType};
use super::selectors::Selector;
use super::validate;

/// Identifies a resource type: (group, plural).
pub type TypeKey = (String, String);

/// Identifies an object within its type: (namespace or "", name).
pub type ObjKey = (String, String);

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// Wire name (`ADDED`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watches.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Type of the changed object.
    pub type_key: TypeKey,
    /// What happened.
    pub event: EventType,
    /// The object before (for MODIFIED; lets selectors turn it into ADDED/DELETED).
    pub old: Option<Value>,
    /// The object after (for DELETED: the last state, with the deletion's resourceVersion).
    pub new: Value,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The object itself.
    Main,
    /// `/status`.
    Status,
}

/// Patch formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

/// Options of a DELETE.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `Orphan` leaves dependents (and removes their owner reference); anything else cascades.
    pub propagation: Option<String>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
}

/// Filters of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this namespace (None: all).
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: Selector,
    /// Field selector.
    pub fields: Selector,
}

impl Filter {
    /// Whether an object passes the filter.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                != ns
        {
            return false;
        }
        self.labels.matches_labels(obj) && self.fields.matches_fields(obj)
    }
}

/// What a new watch starts with.
pub struct WatchStart {
    /// Events to send first (synthetic ADDED for an initial list, or history to replay).
    pub backlog: Vec<(EventType, Value)>,
    /// resourceVersion the backlog brings the watcher to.
    pub rv: u64,
    /// Live changes after the backlog.
    pub live: broadcast::Receiver<Arc<Change>>,
}

/// A page of a list.
pub struct ListPage {
    /// Objects, sorted by namespace then name.
    pub items: Vec<Value>,
    /// resourceVersion of the list.
    pub rv: u64,
    /// Continue token when more remain.
    pub continue_token: Option<String>,
}

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How many changes the history keeps for watches to resume from; older resourceVersions
    /// get 410 Expired.
    pub history_limit: usize,
    /// Act as the StatefulSet and Deployment controllers would with every pod ready: after each
    /// write of one, its status reports `spec.replicas` ready, updated and available, and
    /// `observedGeneration` (as a separate status write by `fake-workload-controller`).
    pub simulate_workloads: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_limit: 5_000,
            simulate_workloads: false,
        }
    }
}

struct State {
    rv: u64,
    uid_seq: u64,
    uid_seed: u64,
    types: Vec<ResourceType>,
    objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Every change with rv > oldest_rv is still in `history`.
    oldest_rv: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

/// The shared store.
pub struct Store {
    state: Mutex<State>,
    simulate_workloads: bool,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just set to an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The object without metadata and status: what `metadata.generation` tracks.
fn generation_view(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(Value::Object(m)) = v.get_mut("metadata") {
        m.remove("managedFields");
    }
    v
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// One managedFields entry.
#[derive(Debug, Clone, PartialEq)]
struct ManagedEntry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|e| ManagedEntry {
            manager: e
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            operation: e
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_string(),
            api_version: e
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            time: e
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            subresource: e
                .get("subresource")
                .and_then(Value::as_str)
                .map(str::to_string),
            fields: e
                .get("fieldsV1")
                .map(patch::from_fields_v1)
                .unwrap_or_default(),
        })
        .collect()
}

fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": patch::to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    let m = meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who is writing and how: the field manager, the managedFields operation, and for apply the
/// full set of fields the applier now owns.
struct Writer<'a> {
    manager: &'a str,
    apply_fields: Option<FieldSet>,
}

impl Store {
    /// An empty store with the built-in types and the `default`, `kube-system` and
    /// `kube-public` namespaces.
    pub fn new(config: StoreConfig) -> Store {
        let (tx, _) = broadcast::channel(4096);
        let seed = clock::now_secs() as u64 ^ u64::from(std::process::id()).rotate_left(32);
        let mut st = State {
            rv: 0,
            uid_seq: 0,
            uid_seed: seed,
            types: registry::builtin_types(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: config.history_limit.max(1),
            oldest_rv: 0,
            tx,
        };
        let ns_type = st.builtin("", "namespaces");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            // Creating the well-known namespaces in an empty store cannot fail.
            let _ = st.create(
                &ns_type,
                "",
                obj,
                &Writer {
                    manager: "fake-apiserver",
                    apply_fields: None,
                },
            );
        }
        Store {
            state: Mutex::new(st),
            simulate_workloads: config.simulate_workloads,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving with the data as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All served types (built-in and from CRDs).
    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().types.clone()
    }

    /// The type serving `group/version` `plural`.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.serves(version))
            .cloned()
    }

    /// Current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// GET one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// LIST objects, paged by `limit` with a continue token holding the last key.
    pub fn list(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let st = self.lock();
        let after: Option<ObjKey> = match continue_token {
            None | Some("") => None,
            Some(t) => {
                let (ns, name) = t.split_once('/').ok_or_else(|| {
                    ApiError::bad_request(format!("invalid continue token {t:?}"))
                })?;
                Some((ns.to_string(), name.to_string()))
            }
        };
        let mut items = Vec::new();
        let mut continue_token = None;
        if let Some(objs) = st.objects.get(&(rt.group.clone(), rt.plural.clone())) {
            for (key, obj) in objs {
                if after.as_ref().is_some_and(|a| key <= a) || !filter.matches(obj) {
                    continue;
                }
                if limit.is_some_and(|l| l > 0 && items.len() >= l) {
                    let last: &Value = &items[items.len() - 1];
                    continue_token = Some(format!(
                        "{}/{}",
                        meta_str(last, "namespace").unwrap_or(""),
                        meta_str(last, "name").unwrap_or("")
                    ));
                    break;
                }
                items.push(obj.clone());
            }
        }
        Ok(ListPage {
            items,
            rv: st.rv,
            continue_token,
        })
    }

    /// POST.
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let result = st.create(
            rt,
            ns,
            obj,
            &Writer {
                manager,
                apply_fields: None,
            },
        );
        self.after_write(&mut st, rt, result)
    }

    /// Runs the simulated workload controllers after a successful write.
    fn after_write(
        &self,
        st: &mut State,
        rt: &ResourceType,
        result: Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        if self.simulate_workloads
            && rt.group == "apps"
            && matches!(rt.plural.as_str(), "statefulsets" | "deployments")
            && let Ok(obj) = &result
        {
            let ns = meta_str(obj, "namespace").unwrap_or_default().to_string();
            let name = meta_str(obj, "name").unwrap_or_default().to_string();
            st.simulate_workload(rt, &ns, &name);
        }
        result
    }

    /// PUT (of the object or its status).
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        sub: Subresource,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let old = st
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        check_name(rt, &obj, name)?;
        if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let result = st.commit_update(
            rt,
            ns,
            name,
            old,
            obj,
            sub,
            &Writer {
                manager,
                apply_fields: None,
            },
        );
        self.after_write(&mut st, rt, result)
    }

    /// PATCH in any of the four formats; apply creates the object when absent.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: Subresource,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        if kind == PatchKind::Apply {
            let result = st.apply(rt, ns, name, body, sub, manager, force);
            return self.after_write(&mut st, rt, result);
        }
        let old = st
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let mut doc = old.clone();
        match kind {
            PatchKind::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut doc, body)
            }
            PatchKind::Strategic => {
                if rt.custom {
                    return Err(ApiError::unsupported_media_type(
                        "application/strategic-merge-patch+json",
                    ));
                }
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be a JSON object",
                    ));
                }
                patch::strategic_merge(&mut doc, body)
            }
            PatchKind::Json => {
                if let Err(msg) = patch::json_patch(&mut doc, body) {
                    // A failed `test` operation is how clients express preconditions.
                    return Err(ApiError {
                        code: 422,
                        reason: "Invalid",
                        message: msg,
                        details: None,
                    });
                }
            }
            PatchKind::Apply => {}
        }
        if !doc.is_object() {
            return Err(ApiError::bad_request(
                "the patched object is not a JSON object",
            ));
        }
        check_name(rt, &doc, name)?;
        if meta_str(&doc, "resourceVersion") != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let result = st.commit_update(
            rt,
            ns,
            name,
            old,
            doc,
            sub,
            &Writer {
                manager,
                apply_fields: None,
            },
        );
        self.after_write(&mut st, rt, result)
    }

    /// DELETE one object: with finalizers it only gets a deletionTimestamp.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let obj = st
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if opts
            .uid
            .as_deref()
            .is_some_and(|u| Some(u) != meta_str(&obj, "uid"))
            || opts
                .resource_version
                .as_deref()
                .is_some_and(|r| Some(r) != meta_str(&obj, "resourceVersion"))
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        if opts.propagation.as_deref() == Some("Orphan")
            && let Some(uid) = meta_str(&obj, "uid")
        {
            st.orphan_dependents(uid);
        }
        Ok(st.delete_object(rt, ns, name))
    }

    /// DELETE a collection: every object passing the filter.
    pub fn delete_collection(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        opts: &DeleteOptions,
    ) -> Vec<Value> {
        let mut st = self.lock();
        let keys: Vec<ObjKey> = st
            .objects
            .get(&(rt.group.clone(), rt.plural.clone()))
            .map(|m| {
                m.iter()
                    .filter(|(_, o)| filter.matches(o))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for (ns, name) in keys {
            if opts.propagation.as_deref() == Some("Orphan")
                && let Some(uid) = st
                    .get(rt, &ns, &name)
                    .and_then(|o| meta_str(o, "uid"))
                    .map(str::to_string)
            {
                st.orphan_dependents(&uid);
            }
            out.push(st.delete_object(rt, &ns, &name));
        }
        out
    }

    /// Starts a watch: the backlog (initial objects or history after `rv`) and the live feed.
    pub fn watch(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        rv: Option<u64>,
        initial: bool,
    ) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let live = st.tx.subscribe();
        let key = (rt.group.clone(), rt.plural.clone());
        let mut backlog = Vec::new();
        match rv {
            Some(rv) if rv > 0 && !initial => {
                if rv < st.oldest_rv {
                    return Err(ApiError::expired(rv, st.oldest_rv));
                }
                for change in st.history.iter().filter(|c| c.rv > rv && c.type_key == key) {
                    if let Some(ev) = filter_change(change, filter) {
                        backlog.push(ev);
                    }
                }
            }
            _ => {
                if let Some(objs) = st.objects.get(&key) {
                    backlog.extend(
                        objs.values()
                            .filter(|o| filter.matches(o))
                            .map(|o| (EventType::Added, o.clone())),
                    );
                }
            }
        }
        Ok(WatchStart {
            backlog,
            rv: st.rv,
            live,
        })
    }
}

/// Turns a change into the event a watcher with `filter` sees, if any: an object that starts
/// matching is ADDED, one that stops matching is DELETED.
pub fn filter_change(change: &Change, filter: &Filter) -> Option<(EventType, Value)> {
    let now = filter.matches(&change.new);
    match change.event {
        EventType::Modified => {
            let before = change.old.as_ref().is_some_and(|o| filter.matches(o));
            match (before, now) {
                (true, true) => Some((EventType::Modified, change.new.clone())),
                (false, true) => Some((EventType::Added, change.new.clone())),
                (true, false) => Some((EventType::Deleted, change.new.clone())),
                (false, false) => None,
            }
        }
        ev => now.then(|| (ev, change.new.clone())),
    }
}

fn check_name(rt: &ResourceType, obj: &Value, name: &str) -> Result<(), ApiError> {
    match meta_str(obj, "name") {
        Some(n) if !n.is_empty() && n != name => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name}) for {}",
            rt.plural
        ))),
        _ => Ok(()),
    }
}

impl State {
    fn builtin(&self, group: &str, plural: &str) -> ResourceType {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
            .unwrap_or_else(|| registry::builtin_types().remove(0))
    }

    fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        let ns = if rt.namespaced { ns } else { "" };
        self.objects
            .get(&(rt.group.clone(), rt.plural.clone()))?
            .get(&(ns.to_string(), name.to_string()))
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn new_uid(&mut self) -> String {
        self.uid_seq += 1;
        let x = self.uid_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.uid_seq;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (x >> 32) as u32,
            (x >> 16) as u16,
            (x & 0xfff) as u16,
            (self.uid_seq >> 48) as u16 & 0xfff,
            self.uid_seq & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.uid_seq += 1;
        let mut x = (self.uid_seed ^ self.uid_seq).wrapping_mul(0x2545_F491_4F6C_DD1D);
        (0..5)
            .map(|_| {
                let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
                x /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    fn record(&mut self, rt: &ResourceType, event: EventType, old: Option<Value>, new: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            type_key: (rt.group.clone(), rt.plural.clone()),
            event,
            old,
            new,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.oldest_rv = c.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    fn store(&mut self, rt: &ResourceType, ns: &str, name: &str, obj: Value) {
        self.objects
            .entry((rt.group.clone(), rt.plural.clone()))
            .or_default()
            .insert((ns.to_string(), name.to_string()), obj);
    }

    fn namespace_state(&self, ns: &str) -> Option<&Value> {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))?
            .get(&(String::new(), ns.to_string()))
    }

    fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        w: &Writer<'_>,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        let api_version = rt.api_version(rt.storage_version());
        if let Some(k) = obj.get("kind").and_then(Value::as_str)
            && k != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the resource {} ({})",
                rt.plural, rt.kind
            )));
        }
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(rt.kind);
        let mut name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            let Some(prefix) = meta_str(&obj, "generateName").map(str::to_string) else {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            };
            name = format!("{prefix}{}", self.random_suffix());
        }
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                &name,
                &[(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                    ),
                )],
            ));
        }
        let ns = if rt.namespaced {
            if ns.is_empty() {
                return Err(ApiError::bad_request(
                    "the namespace of the object must be given in the URL",
                ));
            }
            if let Some(body_ns) = meta_str(&obj, "namespace").filter(|s| !s.is_empty())
                && body_ns != ns
            {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            match self.namespace_state(ns) {
                None => return Err(ApiError::not_found("", "namespaces", ns)),
                Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError {
                        code: 403,
                        reason: "Forbidden",
                        message: format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            rt.plural
                        ),
                        details: None,
                    });
                }
                Some(_) => {}
            }
            ns
        } else {
            ""
        };
        if self.get(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        if rt.status_subresource
            && let Value::Object(m) = &mut obj
        {
            m.remove("status");
        }
        let uid = self.new_uid();
        let now = clock::now_rfc3339();
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            if rt.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(uid));
            m.insert("creationTimestamp".into(), json!(now));
            m.insert("generation".into(), json!(1));
            for f in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "resourceVersion",
            ] {
                m.remove(f);
            }
        }
        self.server_defaults(rt, &mut obj)?;
        validate::apply_defaults(rt, &mut obj);
        validate::validate_metadata(rt, &obj, &name)?;
        validate::validate_builtin(rt, &obj, &name)?;
        validate::validate_object(rt, &obj, &name)?;
        let fields = w
            .apply_fields
            .clone()
            .unwrap_or_else(|| patch::leaf_paths(&obj));
        write_managed(
            &mut obj,
            &[ManagedEntry {
                manager: w.manager.to_string(),
                operation: if w.apply_fields.is_some() {
                    "Apply"
                } else {
                    "Update"
                }
                .to_string(),
                api_version: api_version.clone(),
                time: now,
                subresource: None,
                fields,
            }],
        );
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.store(rt, ns, &name, obj.clone());
        self.record(rt, EventType::Added, None, obj.clone());
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            self.refresh_crd_types();
        }
        Ok(obj)
    }

    /// What the StatefulSet/Deployment controller would report once every pod is ready.
    fn simulate_workload(&mut self, rt: &ResourceType, ns: &str, name: &str) {
        let Some(obj) = self.get(rt, ns, name).cloned() else {
            return;
        };
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        let replicas = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = obj
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let mut new = obj.clone();
        let mut status = obj
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        for f in [
            "replicas",
            "readyReplicas",
            "availableReplicas",
            "updatedReplicas",
        ] {
            status[f] = json!(replicas);
        }
        status["observedGeneration"] = json!(generation);
        if rt.plural == "statefulsets" {
            let revision = format!("{name}-{generation}");
            status["currentReplicas"] = json!(replicas);
            status["currentRevision"] = json!(revision);
            status["updateRevision"] = json!(revision);
        }
        new["status"] = status;
        let w = Writer {
            manager: "fake-workload-controller",
            apply_fields: None,
        };
        // A status write of a live object fails only on validation, which built-ins skip.
        let _ = self.commit_update(rt, ns, name, obj, new, Subresource::Status, &w);
    }

    /// Type-specific things the real server fills in.
    fn server_defaults(&mut self, rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                let phase = if obj.pointer("/metadata/deletionTimestamp").is_some() {
                    "Terminating"
                } else {
                    "Active"
                };
                obj["status"] = json!({"phase": phase});
            }
            ("", "secrets") => {
                // stringData is write-only: it lands base64-encoded in data.
                if let Some(Value::Object(sd)) =
                    obj.as_object_mut().and_then(|m| m.remove("stringData"))
                {
                    if !obj.get("data").is_some_and(Value::is_object) {
                        obj["data"] = json!({});
                    }
                    for (k, v) in sd {
                        let text = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        obj["data"][k] = protobuf::base64(text.as_bytes());
                    }
                }
                if obj.get("type").is_none_or(Value::is_null) {
                    obj["type"] = json!("Opaque");
                }
            }
            ("", "services") => {
                let cluster_ip = obj.pointer("/spec/clusterIP").and_then(Value::as_str);
                if cluster_ip.is_none_or(str::is_empty) {
                    let n = self.uid_seq % 65_000 + 10;
                    if !obj.get("spec").is_some_and(Value::is_object) {
                        obj["spec"] = json!({});
                    }
                    obj["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", n / 250, n % 250 + 1));
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let name = meta_str(obj, "name").unwrap_or_default().to_string();
                let t = registry::crd_to_type(obj).map_err(|e| {
                    ApiError::invalid(
                        "CustomResourceDefinition",
                        &rt.group,
                        &name,
                        &[("spec".into(), e.to_string())],
                    )
                })?;
                if let Some(other) = self
                    .types
                    .iter()
                    .find(|o| o.group == t.group && o.plural == t.plural && !o.custom)
                {
                    return Err(ApiError::invalid(
                        "CustomResourceDefinition",
                        &rt.group,
                        &name,
                        &[(
                            "spec.names.plural".into(),
                            format!("{} is served by a built-in type", other.plural),
                        )],
                    ));
                }
                let names = obj.pointer("/spec/names").cloned().unwrap_or_default();
                let now = clock::now_rfc3339();
                obj["status"] = json!({
                    "acceptedNames": names,
                    "storedVersions": [t.storage_version()],
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn refresh_crd_types(&mut self) {
        let mut types = registry::builtin_types();
        let crd_key = (
            "apiextensions.k8s.io".to_string(),
            "customresourcedefinitions".to_string(),
        );
        if let Some(crds) = self.objects.get(&crd_key) {
            for crd in crds.values() {
                if crd.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                if let Ok(t) = registry::crd_to_type(crd) {
                    types.push(t);
                }
            }
        }
        // Objects of types that are no longer served are removed, as the real server does once
        // a CRD is gone.
        let gone: Vec<ResourceType> = self
            .types
            .iter()
            .filter(|t| {
                t.custom
                    && !types
                        .iter()
                        .any(|n| n.group == t.group && n.plural == t.plural)
            })
            .cloned()
            .collect();
        self.types = types;
        for t in gone {
            let keys: Vec<ObjKey> = self
                .objects
                .get(&(t.group.clone(), t.plural.clone()))
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for (ns, name) in keys {
                self.remove_object(&t, &ns, &name);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        applied: &Value,
        sub: Subresource,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        if !applied.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
        if manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH with apply requires the fieldManager query parameter",
            ));
        }
        check_name(rt, applied, name)?;
        let mut fields = patch::leaf_paths(applied);
        fields.retain(|p| match sub {
            Subresource::Status => p.first().is_some_and(|f| f == "status"),
            Subresource::Main => {
                !(rt.status_subresource && p.first().is_some_and(|f| f == "status"))
            }
        });
        let Some(old) = self.get(rt, ns, name).cloned() else {
            if sub == Subresource::Status {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            }
            let mut obj = applied.clone();
            meta_mut(&mut obj).insert("name".into(), json!(name));
            return self.create(
                rt,
                ns,
                obj,
                &Writer {
                    manager,
                    apply_fields: Some(fields),
                },
            );
        };
        if let Some(rv) = meta_str(applied, "resourceVersion").filter(|s| !s.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let sub_name = (sub == Subresource::Status).then(|| "status".to_string());
        let entries = read_managed(&old);
        let prev: FieldSet = entries
            .iter()
            .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub_name)
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        // Conflicts: fields this apply changes that another manager owns.
        let mut conflicts = Vec::new();
        for p in &fields {
            if patch::get_path(applied, p) == patch::get_path(&old, p) {
                continue;
            }
            for e in entries.iter().filter(|e| e.manager != manager) {
                if e.fields.iter().any(|q| patch::overlaps(p, q)) {
                    conflicts.push(format!(
                        "conflict with \"{}\"{}: {}",
                        e.manager,
                        if e.operation == "Update" {
                            format!(" using {}", e.api_version)
                        } else {
                            String::new()
                        },
                        patch::display_path(p)
                    ));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(ApiError::apply_conflict(
                &rt.group, &rt.plural, name, &conflicts,
            ));
        }
        let mut result = old.clone();
        // Fields this manager applied before and no longer applies are removed, unless another
        // manager also owns them.
        for p in prev.difference(&fields) {
            let shared = entries
                .iter()
                .filter(|e| {
                    !(e.manager == manager && e.operation == "Apply" && e.subresource == sub_name)
                })
                .any(|e| e.fields.iter().any(|q| patch::overlaps(p, q)));
            if !shared {
                patch::remove_path(&mut result, p);
            }
        }
        let mut to_merge = applied.clone();
        if let Some(Value::Object(m)) = to_merge.get_mut("metadata") {
            for f in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "managedFields",
                "deletionTimestamp",
            ] {
                m.remove(f);
            }
        }
        if let Value::Object(m) = &mut to_merge {
            m.remove("apiVersion");
            m.remove("kind");
        }
        patch::deep_merge(&mut result, &to_merge);
        self.commit_update(
            rt,
            ns,
            name,
            old,
            result,
            sub,
            &Writer {
                manager,
                apply_fields: Some(fields),
            },
        )
    }

    /// Common tail of PUT, PATCH and apply: subresource rules, generation, managedFields,
    /// no-op detection, finalizer-driven removal.
    #[allow(clippy::too_many_arguments)]
    fn commit_update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Value,
        new: Value,
        sub: Subresource,
        w: &Writer<'_>,
    ) -> Result<Value, ApiError> {
        let api_version = rt.api_version(rt.storage_version());
        let mut result = match sub {
            Subresource::Status => {
                let mut r = old.clone();
                match new.get("status") {
                    Some(s) => r["status"] = s.clone(),
                    None => {
                        if let Value::Object(m) = &mut r {
                            m.remove("status");
                        }
                    }
                }
                r
            }
            Subresource::Main => {
                let mut r = new;
                if let Value::Object(m) = &mut r {
                    m.insert("apiVersion".into(), json!(api_version));
                    m.insert("kind".into(), json!(rt.kind));
                    if rt.status_subresource {
                        match old.get("status") {
                            Some(s) => {
                                m.insert("status".into(), s.clone());
                            }
                            None => {
                                m.remove("status");
                            }
                        }
                    }
                }
                let old_meta = old.get("metadata").cloned().unwrap_or_default();
                let m = meta_mut(&mut r);
                for f in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "resourceVersion",
                ] {
                    match old_meta.get(f) {
                        Some(v) => m.insert(f.into(), v.clone()),
                        None => m.remove(f),
                    };
                }
                if !m.contains_key("managedFields")
                    && let Some(mf) = old_meta.get("managedFields")
                {
                    m.insert("managedFields".into(), mf.clone());
                }
                r
            }
        };
        if sub == Subresource::Main {
            validate::immutable_fields(rt, &old, &result, name)?;
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let before = finalizers(&old);
            if finalizers(&result).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    &[(
                        "metadata.finalizers".into(),
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    )],
                ));
            }
        }
        self.server_defaults(rt, &mut result)?;
        validate::apply_defaults(rt, &mut result);
        if generation_view(&old) != generation_view(&result) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut result).insert("generation".into(), json!(g + 1));
        }
        validate::validate_metadata(rt, &result, name)?;
        validate::validate_builtin(rt, &result, name)?;
        validate::validate_object(rt, &result, name)?;

        // managedFields: the writer gains what it changed (or exactly what it applied); others
        // lose fields whose values this write changed.
        let (changed, removed) = patch::changed_paths(
            &without_managed_fields(&old),
            &without_managed_fields(&result),
        );
        let sub_name = (sub == Subresource::Status).then(|| "status".to_string());
        let operation = if w.apply_fields.is_some() {
            "Apply"
        } else {
            "Update"
        };
        let mut entries = read_managed(&result);
        let touched: Vec<&FieldPath> = changed.iter().chain(removed.iter()).collect();
        let now = clock::now_rfc3339();
        let mut found = false;
        for e in entries.iter_mut() {
            let mine =
                e.manager == w.manager && e.operation == operation && e.subresource == sub_name;
            let before = e.fields.clone();
            if mine {
                found = true;
                match &w.apply_fields {
                    Some(f) => e.fields = f.clone(),
                    None => {
                        e.fields.extend(changed.iter().cloned());
                        e.fields
                            .retain(|q| !removed.iter().any(|p| patch::overlaps(p, q)));
                    }
                }
                e.api_version = api_version.clone();
            } else {
                e.fields
                    .retain(|q| !touched.iter().any(|p| patch::overlaps(p, q)));
            }
            if e.fields != before {
                e.time = now.clone();
            }
        }
        if !found {
            let fields = w.apply_fields.clone().unwrap_or_else(|| changed.clone());
            entries.push(ManagedEntry {
                manager: w.manager.to_string(),
                operation: operation.to_string(),
                api_version: api_version.clone(),
                time: now,
                subresource: sub_name,
                fields,
            });
        }
        entries.retain(|e| !e.fields.is_empty());
        write_managed(&mut result, &entries);

        if result == old {
            return Ok(old);
        }
        let rv = self.next_rv();
        meta_mut(&mut result).insert("resourceVersion".into(), json!(rv.to_string()));
        let ns = if rt.namespaced { ns } else { "" };
        self.store(rt, ns, name, result.clone());
        self.record(rt, EventType::Modified, Some(old), result.clone());
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            self.refresh_crd_types();
        }
        if result.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&result).is_empty()
        {
            return Ok(self.remove_object(rt, ns, name).unwrap_or(result));
        }
        Ok(result)
    }

    /// DELETE semantics: mark for deletion when finalizers remain, otherwise remove.
    fn delete_object(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Value {
        let ns = if rt.namespaced { ns } else { "" };
        let Some(obj) = self.get(rt, ns, name).cloned() else {
            return Value::Null;
        };
        let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
        if is_namespace {
            return self.terminate_namespace(name, obj);
        }
        if finalizers(&obj).is_empty() {
            return self.remove_object(rt, ns, name).unwrap_or(obj);
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return obj;
        }
        let mut marked = obj.clone();
        {
            // As in Kubernetes, marking an object for deletion bumps its generation, so
            // controllers filtering on generation still see it.
            let generation = obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let m = meta_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(clock::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("generation".into(), json!(generation + 1));
        }
        let rv = self.next_rv();
        meta_mut(&mut marked).insert("resourceVersion".into(), json!(rv.to_string()));
        self.store(rt, ns, name, marked.clone());
        self.record(rt, EventType::Modified, Some(obj), marked.clone());
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            self.refresh_crd_types();
        }
        marked
    }

    /// A namespace being deleted turns Terminating, its contents are deleted, and it goes away
    /// once nothing is left in it.
    fn terminate_namespace(&mut self, name: &str, obj: Value) -> Value {
        let ns_type = self.builtin("", "namespaces");
        let mut current = obj.clone();
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            let m = meta_mut(&mut current);
            m.insert("deletionTimestamp".into(), json!(clock::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            current["status"] = json!({"phase": "Terminating"});
            let rv = self.next_rv();
            meta_mut(&mut current).insert("resourceVersion".into(), json!(rv.to_string()));
            self.store(&ns_type, "", name, current.clone());
            self.record(&ns_type, EventType::Modified, Some(obj), current.clone());
        }
        let types: Vec<ResourceType> = self
            .types
            .iter()
            .filter(|t| t.namespaced)
            .cloned()
            .collect();
        for t in types {
            let names: Vec<String> = self
                .objects
                .get(&(t.group.clone(), t.plural.clone()))
                .map(|m| {
                    m.keys()
                        .filter(|(n, _)| n == name)
                        .map(|(_, o)| o.clone())
                        .collect()
                })
                .unwrap_or_default();
            for o in names {
                self.delete_object(&t, name, &o);
            }
        }
        self.finish_namespace(name);
        self.get(&ns_type, "", name).cloned().unwrap_or(current)
    }

    /// Removes a Terminating namespace once it is empty.
    fn finish_namespace(&mut self, name: &str) {
        let ns_type = self.builtin("", "namespaces");
        let terminating = self
            .get(&ns_type, "", name)
            .is_some_and(|n| n.pointer("/metadata/deletionTimestamp").is_some());
        if !terminating
            || !finalizers(self.get(&ns_type, "", name).unwrap_or(&Value::Null)).is_empty()
        {
            return;
        }
        let empty = self.types.iter().filter(|t| t.namespaced).all(|t| {
            self.objects
                .get(&(t.group.clone(), t.plural.clone()))
                .is_none_or(|m| !m.keys().any(|(n, _)| n == name))
        });
        if empty {
            self.remove_object(&ns_type, "", name);
        }
    }

    /// Removes an object for good, then collects its dependents.
    fn remove_object(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        let key = (rt.group.clone(), rt.plural.clone());
        let mut obj = self
            .objects
            .get_mut(&key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.record(rt, EventType::Deleted, None, obj.clone());
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            self.refresh_crd_types();
        }
        if let Some(uid) = meta_str(&obj, "uid").map(str::to_string) {
            self.collect_garbage(&uid);
        }
        if rt.namespaced {
            self.finish_namespace(ns);
        }
        Some(obj)
    }

    fn all_uids(&self) -> std::collections::HashSet<String> {
        self.objects
            .values()
            .flat_map(|m| m.values())
            .filter_map(|o| meta_str(o, "uid").map(str::to_string))
            .collect()
    }

    /// Deletes (background propagation) every object all of whose owners are gone, once one
    /// owner with `uid` has been removed.
    fn collect_garbage(&mut self, uid: &str) {
        let mut dependents: Vec<(ResourceType, String, String)> = Vec::new();
        let live = self.all_uids();
        for t in &self.types {
            let Some(objs) = self.objects.get(&(t.group.clone(), t.plural.clone())) else {
                continue;
            };
            for ((ns, name), o) in objs {
                let owners: Vec<&str> = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.get("uid").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                if owners.contains(&uid) && owners.iter().all(|u| !live.contains(*u)) {
                    dependents.push((t.clone(), ns.clone(), name.clone()));
                }
            }
        }
        for (t, ns, name) in dependents {
            self.delete_object(&t, &ns, &name);
        }
    }

    /// Orphan propagation: dependents lose their owner reference to `uid`.
    fn orphan_dependents(&mut self, uid: &str) {
        let mut updates = Vec::new();
        for t in &self.types {
            let Some(objs) = self.objects.get(&(t.group.clone(), t.plural.clone())) else {
                continue;
            };
            for ((ns, name), o) in objs {
                let Some(refs) = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                else {
                    continue;
                };
                if refs
                    .iter()
                    .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                {
                    let mut n = o.clone();
                    let kept: Vec<Value> = refs
                        .iter()
                        .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid))
                        .cloned()
                        .collect();
                    let m = meta_mut(&mut n);
                    if kept.is_empty() {
                        m.remove("ownerReferences");
                    } else {
                        m.insert("ownerReferences".into(), Value::Array(kept));
                    }
                    updates.push((t.clone(), ns.clone(), name.clone(), o.clone(), n));
                }
            }
        }
        for (t, ns, name, old, new) in updates {
            let w = Writer {
                manager: "garbage-collector",
                apply_fields: None,
            };
            // Removing an owner reference cannot violate validation or finalizer rules.
            let _ = self.commit_update(&t, &ns, &name, old, new, Subresource::Main, &w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(StoreConfig {
            history_limit: 100,
            simulate_workloads: false,
        })
    }

    fn cm_type(s: &Store) -> ResourceType {
        s.resolve("", "v1", "configmaps").unwrap()
    }

    #[test]
    fn create_assigns_uid_rv_generation_and_generate_name() {
        let s = store();
        let t = cm_type(&s);
        let obj = s
            .create(
                &t,
                "default",
                json!({"metadata": {"generateName": "cfg-"}, "data": {"a": "1"}}),
                "test",
            )
            .unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");
        assert_eq!(obj["metadata"]["generation"], 1);
        assert_eq!(obj["metadata"]["namespace"], "default");
        assert_eq!(
            obj["metadata"]["resourceVersion"],
            s.current_rv().to_string()
        );
        assert_eq!(obj["apiVersion"], "v1");
        let again = s.create(&t, "default", json!({"metadata": {"name": name}}), "test");
        assert_eq!(again.unwrap_err().reason, "AlreadyExists");
        let missing_ns = s.create(&t, "nope", json!({"metadata": {"name": "x"}}), "test");
        assert_eq!(missing_ns.unwrap_err().code, 404);
    }

    #[test]
    fn secret_string_data_is_encoded_into_data_and_type_defaults() {
        let s = store();
        let t = s.resolve("", "v1", "secrets").unwrap();
        let obj = s
            .create(
                &t,
                "default",
                json!({"metadata": {"name": "s"}, "stringData": {"pw": "secret"}}),
                "t",
            )
            .unwrap();
        assert_eq!(obj["data"], json!({"pw": "c2VjcmV0"}));
        assert_eq!(obj["type"], "Opaque");
        assert!(obj.get("stringData").is_none());
    }

    #[test]
    fn simulated_workload_controller_reports_replicas_ready() {
        let s = Store::new(StoreConfig {
            history_limit: 100,
            simulate_workloads: true,
        });
        let t = s.resolve("apps", "v1", "statefulsets").unwrap();
        let sts = json!({"metadata": {"name": "ing"}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "i"}},
            "template": {"metadata": {"labels": {"app": "i"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        s.patch(
            &t,
            "default",
            "ing",
            PatchKind::Apply,
            &sts,
            Subresource::Main,
            "op",
            true,
        )
        .unwrap();
        let got = s.get(&t, "default", "ing").unwrap();
        assert_eq!(got["status"]["readyReplicas"], 3);
        assert_eq!(got["status"]["observedGeneration"], 1);
        let scaled = json!({"spec": {"replicas": 5}});
        s.patch(
            &t,
            "default",
            "ing",
            PatchKind::Merge,
            &scaled,
            Subresource::Main,
            "op",
            false,
        )
        .unwrap();
        let got = s.get(&t, "default", "ing").unwrap();
        assert_eq!(
            (
                got["status"]["readyReplicas"].clone(),
                got["status"]["observedGeneration"].clone()
            ),
            (json!(5), json!(2))
        );
    }

    #[test]
    fn statefulset_spec_outside_the_mutable_fields_is_immutable() {
        let s = store();
        let t = s.resolve("apps", "v1", "statefulsets").unwrap();
        let sts = json!({"metadata": {"name": "c"}, "spec": {"replicas": 1, "serviceName": "c",
            "selector": {"matchLabels": {"app": "c"}},
            "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "c", "image": "c"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "50Gi"}}}}]}});
        s.patch(
            &t,
            "default",
            "c",
            PatchKind::Apply,
            &sts,
            Subresource::Main,
            "op",
            true,
        )
        .unwrap();
        let scale =
            json!({"spec": {"replicas": 3, "template": {"metadata": {"labels": {"a": "b"}}}}});
        s.patch(
            &t,
            "default",
            "c",
            PatchKind::Merge,
            &scale,
            Subresource::Main,
            "op",
            false,
        )
        .unwrap();
        let resize = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"resources": {"requests": {"storage": "80Gi"}}}}]}});
        let err = s
            .patch(
                &t,
                "default",
                "c",
                PatchKind::Merge,
                &resize,
                Subresource::Main,
                "op",
                false,
            )
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message
                .contains("updates to statefulset spec for fields other than"),
            "{}",
            err.message
        );
    }

    #[test]
    fn deleting_a_namespace_waits_for_its_contents() {
        let s = store();
        let ns = s.resolve("", "v1", "namespaces").unwrap();
        let t = cm_type(&s);
        s.create(&ns, "", json!({"metadata": {"name": "team"}}), "t")
            .unwrap();
        s.create(&t, "team", json!({"metadata": {"name": "plain"}}), "t")
            .unwrap();
        s.create(
            &t,
            "team",
            json!({"metadata": {"name": "held", "finalizers": ["x/y"]}}),
            "t",
        )
        .unwrap();
        let terminating = s
            .delete(&ns, "", "team", &DeleteOptions::default())
            .unwrap();
        assert_eq!(terminating["status"]["phase"], "Terminating");
        assert_eq!(s.get(&t, "team", "plain").unwrap_err().code, 404);
        let refused = s
            .create(&t, "team", json!({"metadata": {"name": "new"}}), "t")
            .unwrap_err();
        assert_eq!(refused.code, 403);
        let release = json!({"metadata": {"finalizers": null}});
        s.patch(
            &t,
            "team",
            "held",
            PatchKind::Merge,
            &release,
            Subresource::Main,
            "t",
            false,
        )
        .unwrap();
        assert_eq!(s.get(&ns, "", "team").unwrap_err().code, 404);
    }

    #[test]
    fn orphan_deletion_keeps_dependents_without_the_owner_reference() {
        let s = store();
        let t = cm_type(&s);
        let owner = s
            .create(&t, "default", json!({"metadata": {"name": "o"}}), "t")
            .unwrap();
        let oref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": owner["metadata"]["uid"]}]);
        s.create(
            &t,
            "default",
            json!({"metadata": {"name": "d", "ownerReferences": oref}}),
            "t",
        )
        .unwrap();
        let opts = DeleteOptions {
            propagation: Some("Orphan".into()),
            ..DeleteOptions::default()
        };
        s.delete(&t, "default", "o", &opts).unwrap();
        let d = s.get(&t, "default", "d").unwrap();
        assert!(d["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn update_with_stale_resource_version_conflicts() {
        let s = store();
        let t = cm_type(&s);
        let obj = s
            .create(&t, "default", json!({"metadata": {"name": "a"}}), "test")
            .unwrap();
        let mut v1 = obj.clone();
        v1["data"] = json!({"k": "1"});
        let updated = s
            .update(&t, "default", "a", v1, Subresource::Main, "test")
            .unwrap();
        assert_ne!(
            updated["metadata"]["resourceVersion"],
            obj["metadata"]["resourceVersion"]
        );
        let mut stale = obj;
        stale["data"] = json!({"k": "2"});
        let err = s
            .update(&t, "default", "a", stale, Subresource::Main, "test")
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn apply_is_idempotent_and_removes_fields_no_longer_applied() {
        let s = store();
        let t = cm_type(&s);
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}},
                         "data": {"k": "1", "j": "2"}});
        let first = s
            .patch(
                &t,
                "default",
                "a",
                PatchKind::Apply,
                &cfg,
                Subresource::Main,
                "op",
                false,
            )
            .unwrap();
        let second = s
            .patch(
                &t,
                "default",
                "a",
                PatchKind::Apply,
                &cfg,
                Subresource::Main,
                "op",
                false,
            )
            .unwrap();
        assert_eq!(first, second);
        let smaller = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "1"}});
        let third = s
            .patch(
                &t,
                "default",
                "a",
                PatchKind::Apply,
                &smaller,
                Subresource::Main,
                "op",
                false,
            )
            .unwrap();
        assert_eq!(third["data"], json!({"k": "1"}));
        assert!(third["metadata"].get("labels").is_none());
        assert_ne!(
            third["metadata"]["resourceVersion"],
            second["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let s = store();
        let t = cm_type(&s);
        let a = json!({"metadata": {"name": "c"}, "data": {"k": "a"}});
        s.patch(
            &t,
            "default",
            "c",
            PatchKind::Apply,
            &a,
            Subresource::Main,
            "alice",
            false,
        )
        .unwrap();
        let b = json!({"metadata": {"name": "c"}, "data": {"k": "b"}});
        let err = s
            .patch(
                &t,
                "default",
                "c",
                PatchKind::Apply,
                &b,
                Subresource::Main,
                "bob",
                false,
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains("alice"), "{}", err.message);
        let forced = s
            .patch(
                &t,
                "default",
                "c",
                PatchKind::Apply,
                &b,
                Subresource::Main,
                "bob",
                true,
            )
            .unwrap();
        assert_eq!(forced["data"]["k"], "b");
        // alice lost the field, so re-applying without it no longer removes bob's value.
        let alice_empty = json!({"metadata": {"name": "c"}});
        let after = s
            .patch(
                &t,
                "default",
                "c",
                PatchKind::Apply,
                &alice_empty,
                Subresource::Main,
                "alice",
                false,
            )
            .unwrap();
        assert_eq!(after["data"]["k"], "b");
    }

    #[test]
    fn finalizer_delays_deletion_until_removed() {
        let s = store();
        let t = cm_type(&s);
        s.create(
            &t,
            "default",
            json!({"metadata": {"name": "f", "finalizers": ["x/y"]}}),
            "test",
        )
        .unwrap();
        let marked = s
            .delete(&t, "default", "f", &DeleteOptions::default())
            .unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get(&t, "default", "f").is_ok());
        let patch = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "x/y"},
                           {"op": "remove", "path": "/metadata/finalizers/0"}]);
        s.patch(
            &t,
            "default",
            "f",
            PatchKind::Json,
            &patch,
            Subresource::Main,
            "test",
            false,
        )
        .unwrap();
        assert_eq!(s.get(&t, "default", "f").unwrap_err().code, 404);
    }

    #[test]
    fn deleting_owner_collects_dependents_transitively() {
        let s = store();
        let t = cm_type(&s);
        let owner = s
            .create(&t, "default", json!({"metadata": {"name": "owner"}}), "t")
            .unwrap();
        let oref = |o: &Value| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]}]);
        let child = s
            .create(
                &t,
                "default",
                json!({"metadata": {"name": "child", "ownerReferences": oref(&owner)}}),
                "t",
            )
            .unwrap();
        s.create(
            &t,
            "default",
            json!({"metadata": {"name": "grandchild", "ownerReferences": oref(&child)}}),
            "t",
        )
        .unwrap();
        s.create(&t, "default", json!({"metadata": {"name": "other"}}), "t")
            .unwrap();
        s.delete(&t, "default", "owner", &DeleteOptions::default())
            .unwrap();
        for gone in ["owner", "child", "grandchild"] {
            assert_eq!(s.get(&t, "default", gone).unwrap_err().code, 404, "{gone}");
        }
        assert!(s.get(&t, "default", "other").is_ok());
    }

    #[test]
    fn watch_from_too_old_resource_version_is_expired() {
        let s = Store::new(StoreConfig {
            history_limit: 2,
            simulate_workloads: false,
        });
        let t = cm_type(&s);
        let start = s.current_rv();
        for i in 0..5 {
            s.create(
                &t,
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
                "t",
            )
            .unwrap();
        }
        let err = s
            .watch(&t, &Filter::default(), Some(start), false)
            .err()
            .unwrap();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        let recent = s
            .watch(&t, &Filter::default(), Some(s.current_rv() - 1), false)
            .unwrap();
        assert_eq!(recent.backlog.len(), 1);
        assert_eq!(recent.backlog[0].1["metadata"]["name"], "c4");
    }
}
