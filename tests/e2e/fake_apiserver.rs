//! The fake Kubernetes API server driven by real clients: kube-rs (the operator's client
//! library: typed and dynamic APIs, watches, the runtime watcher, server-side apply, events)
//! and the `kubectl` binary (discovery, `apply --server-side`, printer columns, delete).

use std::process::Command;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Config, Resource, ResourceExt};
use rimir_e2e::ChildGuard;
use rimir_e2e::fake_apiserver::{FakeApiServer, ServerConfig, StoreConfig};
use serde_json::{Value, json};

async fn start_with(config: ServerConfig) -> (FakeApiServer, Client) {
    // Both ring and aws-lc-rs are compiled into rustls in this workspace: choose one. A second
    // install (another test) fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = FakeApiServer::start(config)
        .await
        .expect("start fake API server");
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig()).expect("parse kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    let client = Client::try_from(config).expect("client");
    (server, client)
}

async fn start() -> (FakeApiServer, Client) {
    start_with(ServerConfig {
        bookmark_interval: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await
}

fn cm(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels}, "data": data
    }))
    .expect("configmap json")
}

fn api_status(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "mode": {"type": "string", "enum": ["fast", "slow"]}
                        }},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }}
            }]
        }
    }))
    .expect("crd json")
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.io", "v1", "Widget"),
        "widgets",
    )
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec
    }))
    .expect("widget json")
}

async fn install_widget_crd(client: &Client) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd())
        .await
        .expect("create CRD");
    Api::namespaced_with(client.clone(), "default", &widget_resource())
}

#[tokio::test]
async fn crud_list_selectors_and_error_statuses() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms
        .create(
            &PostParams::default(),
            &cm("a", json!({"app": "web"}), json!({"k": "1"})),
        )
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("b", json!({"app": "db"}), json!({})),
    )
    .await
    .unwrap();
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
    )
    .await
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "other")
        .create(
            &PostParams::default(),
            &cm("c", json!({"app": "web"}), json!({})),
        )
        .await
        .unwrap();

    assert!(a.uid().is_some() && a.creation_timestamp().is_some());
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "1");

    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app in (web,db)"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app!=web"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["a", "c"]
    );
    let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(names(page.clone()), ["a"]);
    let next = ListParams::default()
        .limit(1)
        .continue_token(page.metadata.continue_.as_deref().unwrap());
    assert_eq!(names(cms.list(&next).await.unwrap()), ["b"]);

    assert_eq!(
        api_status(cms.get("missing").await.unwrap_err()),
        (404, "NotFound".into())
    );
    let dup = cms
        .create(&PostParams::default(), &cm("a", json!({}), json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_status(dup), (409, "AlreadyExists".into()));

    // PUT with the current resourceVersion succeeds; with the old one it conflicts.
    let mut fresh = a.clone();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = cms
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_ne!(replaced.resource_version(), a.resource_version());
    let stale = cms
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap_err();
    assert_eq!(api_status(stale), (409, "Conflict".into()));

    cms.delete("b", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_status(cms.get("b").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn watch_resumes_from_resource_version_and_reports_expired() {
    let (_server, client) = start_with(ServerConfig {
        store: StoreConfig {
            history_limit: 5,
            simulate_workloads: false,
        },
        bookmark_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(
            &PostParams::default(),
            &cm("w", json!({}), json!({"v": "0"})),
        )
        .await
        .unwrap();
    let rv = created.resource_version().unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "1"}})),
    )
    .await
    .unwrap();
    cms.create(&PostParams::default(), &cm("other", json!({}), json!({})))
        .await
        .unwrap();

    // Resuming from the creation's resourceVersion replays exactly what happened after it.
    let mut stream = cms
        .watch(&WatchParams::default().fields("metadata.name=w"), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Modified(o)) => assert_eq!(o.data.unwrap()["v"], "1"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    cms.delete("w", &DeleteParams::default()).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Bookmark(_)) => continue,
            Some(WatchEvent::Deleted(o)) => {
                assert_eq!(o.name_any(), "w");
                break;
            }
            other => panic!("expected DELETED, got {other:?}"),
        }
    }

    // Bookmarks arrive on an idle watch and carry the latest resourceVersion.
    let now = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut idle = cms
        .watch(&WatchParams::default().labels("none=here"), &now)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), idle.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, now),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }

    // After more changes than the history keeps, the first resourceVersion is too old.
    for i in 0..10 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("n{i}"), json!({}), json!({})),
        )
        .await
        .unwrap();
    }
    let mut expired = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match expired.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn runtime_watcher_lists_then_streams_in_both_initial_modes() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("pre", json!({"app": "x"}), json!({})),
    )
    .await
    .unwrap();
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut existing: Vec<String> = cms
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        existing.sort();
        let mut events = watcher(cms.clone(), config.labels("app=x")).boxed();
        let mut initial = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.try_next())
                .await
                .unwrap()
                .unwrap()
            {
                Some(watcher::Event::Init) => {}
                Some(watcher::Event::InitApply(o)) => initial.push(o.name_any()),
                Some(watcher::Event::InitDone) => break,
                other => panic!("unexpected event during init: {other:?}"),
            }
        }
        initial.sort();
        assert_eq!(initial, existing);
        let name = format!(
            "live-{}",
            cms.list(&ListParams::default()).await.unwrap().items.len()
        );
        cms.create(
            &PostParams::default(),
            &cm(&name, json!({"app": "x"}), json!({})),
        )
        .await
        .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::Apply(o)) => assert_eq!(o.name_any(), name),
            other => panic!("expected the live object, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn server_side_apply_is_idempotent_and_tracks_field_ownership() {
    let (_server, client) = start().await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let desired = |replicas: i64, labels: Value| {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "ingester", "labels": labels},
            "spec": {"replicas": replicas, "serviceName": "ingester",
                     "selector": {"matchLabels": {"app": "ingester"}},
                     "template": {"metadata": {"labels": {"app": "ingester"}},
                                  "spec": {"containers": [{"name": "rimir", "image": "rimir:1"}]}}}
        })
    };
    let pp = PatchParams::apply("rimir-operator").force();
    let first = sts
        .patch(
            "ingester",
            &pp,
            &Patch::Apply(desired(3, json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(first.metadata.generation, Some(1));
    let mf = first.metadata.managed_fields.clone().unwrap();
    assert_eq!(
        (mf[0].manager.as_deref(), mf[0].operation.as_deref()),
        (Some("rimir-operator"), Some("Apply"))
    );

    let again = sts
        .patch(
            "ingester",
            &pp,
            &Patch::Apply(desired(3, json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        again.resource_version(),
        first.resource_version(),
        "a no-op apply must not bump resourceVersion"
    );
    assert_eq!(again.metadata.generation, Some(1));

    // Dropping label b from the applied config removes it; changing replicas bumps generation.
    let changed = sts
        .patch(
            "ingester",
            &pp,
            &Patch::Apply(desired(5, json!({"a": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(changed.spec.as_ref().unwrap().replicas, Some(5));
    assert_eq!(changed.metadata.generation, Some(2));
    assert_eq!(changed.labels().keys().collect::<Vec<_>>(), ["a"]);

    // Another manager changing an owned field conflicts unless it forces.
    let other = PatchParams::apply("kubectl");
    let conflict = sts
        .patch(
            "ingester",
            &other,
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "ingester"}, "spec": {"replicas": 7}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_status(conflict), (409, "Conflict".into()));
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("p", json!({"x": "1"}), json!({"a": "1", "b": "2"})),
    )
    .await
    .unwrap();
    let merged = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": null, "c": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.clone().unwrap().into_iter().collect::<Vec<_>>(),
        [
            ("b".to_string(), "2".to_string()),
            ("c".to_string(), "3".to_string())
        ]
    );
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "20"}
    ]))
    .unwrap();
    let patched = cms
        .patch("p", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["b"], "20");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/b", "value": "nope"}]))
            .unwrap();
    let err = cms
        .patch("p", &PatchParams::default(), &Patch::Json::<()>(failing))
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 422);

    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    sts.patch(
        "s",
        &PatchParams::apply("t"),
        &Patch::Apply(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
            "spec": {"selector": {"matchLabels": {"app": "s"}}, "serviceName": "s", "template": {
                "metadata": {"labels": {"app": "s"}},
                "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}}
        })),
    )
    .await
    .unwrap();
    let smp =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}});
    let s = sts
        .patch("s", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    let images: Vec<_> = s
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.image.unwrap())
        .collect();
    assert_eq!(images, ["a:1", "b:2"]);
}

#[tokio::test]
async fn dynamic_crd_status_subresource_generation_and_validation() {
    let (_server, client) = start().await;
    let widgets = install_widget_crd(&client).await;

    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.io", "v1", "Widget"))
        .unwrap();
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));

    let mut w = widget("w1", json!({"size": 1}));
    w.data["status"] = json!({"phase": "ignored"});
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.data.get("status").is_none(),
        "status is only written through /status"
    );

    let status = json!({"status": {"phase": "Ready", "observedGeneration": 1}});
    let st = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(st.data["status"]["phase"], "Ready");
    assert_eq!(
        st.metadata.generation,
        Some(1),
        "status changes do not bump generation"
    );

    let spec = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));
    assert_eq!(
        spec.data["status"]["phase"], "Ready",
        "status in a main-resource patch is ignored"
    );

    // Server-side apply of status through the subresource, with the operator's field manager.
    let applied = widgets
        .patch_status(
            "w1",
            &PatchParams::apply("op").force(),
            &Patch::Apply(json!({"apiVersion": "example.io/v1", "kind": "Widget", "status": {"phase": "Done"}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["status"]["phase"], "Done");
    assert_eq!(applied.metadata.generation, Some(2));

    let invalid = widgets
        .create(
            &PostParams::default(),
            &widget("bad", json!({"mode": "turbo"})),
        )
        .await
        .unwrap_err();
    match invalid {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(
                s.message.contains("spec.size: Required value"),
                "{}",
                s.message
            );
            assert!(
                s.message.contains("spec.mode: Unsupported value"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }

    // Deleting the CRD stops serving the type and removes its objects.
    Api::<CustomResourceDefinition>::all(client.clone())
        .delete("widgets.example.io", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_status(widgets.get("w1").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (_server, client) = start().await;
    let widgets = install_widget_crd(&client).await;
    let mut w = widget("f", json!({"size": 1}));
    w.metadata.finalizers = Some(vec!["rimir.io/cleanup".into()]);
    widgets.create(&PostParams::default(), &w).await.unwrap();

    let deleted = widgets.delete("f", &DeleteParams::default()).await.unwrap();
    let marked = deleted
        .left()
        .expect("the object is returned while finalizers remain");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        widgets
            .get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    let add = widgets
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["rimir.io/cleanup", "x/y"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_status(add).0, 422, "no new finalizers while deleting");

    let rv = widgets.get("f").await.unwrap().resource_version().unwrap();
    let mut stream = widgets
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    widgets
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("DELETED") {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Modified(_)) => seen.push("MODIFIED".to_string()),
            Some(WatchEvent::Deleted(_)) => seen.push("DELETED".to_string()),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["MODIFIED", "DELETED"]);
    assert_eq!(api_status(widgets.get("f").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn kube_runtime_finalizer_helper_adds_runs_and_removes_its_finalizer() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event as Fin, finalizer};
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("fin", json!({}), json!({})))
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let step = |seen: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>| {
        move |ev: Fin<ConfigMap>| async move {
            seen.lock().unwrap().push(match ev {
                Fin::Apply(_) => "apply",
                Fin::Cleanup(_) => "cleanup",
            });
            Ok::<_, std::convert::Infallible>(Action::await_change())
        }
    };
    for _ in 0..2 {
        let obj = std::sync::Arc::new(cms.get("fin").await.unwrap());
        finalizer(&cms, "rimir.io/cleanup", obj, step(seen.clone()))
            .await
            .unwrap();
    }
    let current = cms.get("fin").await.unwrap();
    assert_eq!(current.finalizers(), ["rimir.io/cleanup"]);
    let generation = current.metadata.generation.unwrap();

    cms.delete("fin", &DeleteParams::default()).await.unwrap();
    let marked = cms.get("fin").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata.generation,
        Some(generation + 1),
        "marking for deletion bumps generation"
    );
    finalizer(
        &cms,
        "rimir.io/cleanup",
        std::sync::Arc::new(marked),
        step(seen.clone()),
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["apply", "cleanup"]);
    assert_eq!(api_status(cms.get("fin").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn metadata_watcher_receives_partial_object_metadata() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("m1", json!({"k": "v"}), json!({"big": "data"})),
    )
    .await
    .unwrap();
    let mut events = watcher(
        Api::<kube::core::PartialObjectMeta<ConfigMap>>::namespaced(client.clone(), "default"),
        watcher::Config::default(),
    )
    .boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::Init) => {}
            Some(watcher::Event::InitApply(o)) => names.push((o.name_any(), o.labels().clone())),
            Some(watcher::Event::InitDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        names,
        [(
            "m1".to_string(),
            [("k".to_string(), "v".to_string())].into()
        )]
    );
    cms.create(&PostParams::default(), &cm("m2", json!({}), json!({})))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(watcher::Event::Apply(o)) => assert_eq!(o.name_any(), "m2"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() {
    let (_server, client) = start().await;
    let widgets = install_widget_crd(&client).await;
    let owner = widgets
        .create(&PostParams::default(), &widget("owner", json!({"size": 1})))
        .await
        .unwrap();
    let oref = json!([{"apiVersion": "example.io/v1", "kind": "Widget", "name": "owner",
                       "uid": owner.uid().unwrap(), "controller": true, "blockOwnerDeletion": true}]);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut child = cm("child", json!({}), json!({}));
    child.metadata.owner_references = Some(serde_json::from_value(oref).unwrap());
    let child = cms.create(&PostParams::default(), &child).await.unwrap();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    sts.patch("grandchild", &PatchParams::apply("t"), &Patch::Apply(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "grandchild", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "child", "uid": child.uid().unwrap()}]},
        "spec": {"selector": {"matchLabels": {"app": "g"}}, "serviceName": "g", "template": {
            "metadata": {"labels": {"app": "g"}}, "spec": {"containers": [{"name": "g", "image": "g:1"}]}}}
    })))
    .await
    .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("bystander", json!({}), json!({})),
    )
    .await
    .unwrap();

    widgets
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert_eq!(api_status(cms.get("child").await.unwrap_err()).0, 404);
    assert_eq!(api_status(sts.get("grandchild").await.unwrap_err()).0, 404);
    assert!(cms.get("bystander").await.is_ok());
}

#[tokio::test]
async fn events_from_the_runtime_recorder_are_created_then_patched() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let obj = cms
        .create(&PostParams::default(), &cm("e", json!({}), json!({})))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "rimir-operator".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Created".into(),
        note: Some("made it".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(list.items[0].reason.as_deref(), Some("Created"));
}

#[tokio::test]
async fn malformed_requests_get_status_errors() {
    let (server, _client) = start().await;
    let url = server.url();
    let handle = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let post = |path: &str, ct: &str, body: &str| {
            let mut resp = agent
                .post(format!("{url}{path}"))
                .header("Content-Type", ct)
                .send(body)
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value =
                serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
            (status, body)
        };
        let (code, body) = post(
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            "{not json",
        );
        assert_eq!(
            (code, body["kind"].as_str(), body["reason"].as_str()),
            (400, Some("Status"), Some("BadRequest"))
        );
        let (code, body) = post(
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            "[1,2]",
        );
        assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
        let (code, body) = post(
            "/api/v1/namespaces/default/configmaps/x",
            "application/json",
            "{}",
        );
        assert_eq!(
            (code, body["reason"].as_str()),
            (405, Some("MethodNotAllowed"))
        );
        let (code, body) = post("/apis/nope.io/v1/things", "application/json", "{}");
        assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
        let mut resp = agent
            .get(format!(
                "{url}/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20(b"
            ))
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["code"], 400);
        let mut patch = agent
            .patch(format!("{url}/api/v1/namespaces/default/configmaps/x"))
            .header("Content-Type", "text/plain")
            .send("{}")
            .unwrap();
        assert_eq!(patch.status().as_u16(), 415);
        let _ = patch.body_mut().read_to_string();
    });
    handle.await.unwrap();
}

/// Runs kubectl against the server with a throwaway cache directory.
struct Kubectl {
    kubeconfig: tempfile::NamedTempFile,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &FakeApiServer) -> Kubectl {
        let kubeconfig = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(kubeconfig.path(), server.kubeconfig()).unwrap();
        Kubectl {
            kubeconfig,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig.path())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .expect("kubectl is installed (tests/run.sh installs it)");
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        drop(child.stdin.take());
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_with_printer_columns_and_deletes() {
    assert!(
        kubectl_available(),
        "kubectl must be installed (tests/run.sh installs it)"
    );
    let (server, client) = start().await;
    let k = Kubectl::new(&server);
    let crd = serde_yaml::to_string(&widget_crd()).unwrap();
    let (ok, out, err) = k
        .run(&["apply", "--server-side", "-f", "-"], Some(&crd))
        .await;
    assert!(ok, "{out}{err}");
    let manifest =
        "apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n";
    let (ok, out, err) = k
        .run(&["apply", "--server-side", "-f", "-"], Some(manifest))
        .await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("widget.example.io/w1 serverside-applied"),
        "{out}"
    );

    let widgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &widget_resource());
    widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    let (ok, out, err) = k.run(&["get", "wd"], None).await;
    assert!(ok, "{out}{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "SIZE", "READY", "AGE"], "{out}");
    assert_eq!(&lines[1][..3], ["w1", "3", "True"], "{out}");

    let (ok, out, err) = k
        .run(
            &["get", "widgets", "w1", "-o", "jsonpath={.spec.size}"],
            None,
        )
        .await;
    assert!(ok, "{out}{err}");
    assert_eq!(out, "3");

    let invalid =
        "apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  mode: warp\n";
    let (ok, out, err) = k
        .run(&["apply", "--server-side", "-f", "-"], Some(invalid))
        .await;
    assert!(!ok, "{out}");
    assert!(err.contains("spec.size: Required value"), "{err}");

    // Imperative creates send protobuf bodies.
    let (ok, out, err) = k.run(&["create", "namespace", "team-a"], None).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = k
        .run(
            &[
                "-n",
                "team-a",
                "create",
                "secret",
                "generic",
                "s",
                "--from-literal=pw=hunter2",
            ],
            None,
        )
        .await;
    assert!(ok, "{out}{err}");
    let secret: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "team-a");
    let data = secret.get("s").await.unwrap().data.unwrap();
    assert_eq!(data["pw"].0, b"hunter2");

    let (ok, out, err) = k.run(&["delete", "widget", "w1"], None).await;
    assert!(ok, "{out}{err}");
    assert_eq!(api_status(widgets.get("w1").await.unwrap_err()).0, 404);
    let (ok, out, _) = k.run(&["get", "widgets"], None).await;
    assert!(ok && out.is_empty(), "{out}");
}

#[tokio::test]
async fn table_output_for_lists_and_watch_events() {
    let (server, client) = start().await;
    let widgets = install_widget_crd(&client).await;
    widgets
        .create(&PostParams::default(), &widget("t1", json!({"size": 7})))
        .await
        .unwrap();
    let url = server.url();
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (list, first_event) = tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::new_with_defaults();
        let path = format!("{url}/apis/example.io/v1/namespaces/default/widgets");
        let list: Value = serde_json::from_str(
            &agent
                .get(&path)
                .header("Accept", accept)
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let watch = agent
            .get(format!("{path}?watch=true&timeoutSeconds=1"))
            .header("Accept", accept)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let first: Value = serde_json::from_str(watch.lines().next().unwrap()).unwrap();
        (list, first)
    })
    .await
    .unwrap();
    assert_eq!(list["kind"], "Table");
    let headers: Vec<&str> = list["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(headers, ["Name", "Size", "Ready", "Age"]);
    assert_eq!(list["rows"][0]["cells"][0], "t1");
    assert_eq!(list["rows"][0]["cells"][1], 7);
    assert_eq!(list["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(first_event["type"], "ADDED");
    assert_eq!(first_event["object"]["kind"], "Table");
    assert_eq!(first_event["object"]["rows"][0]["cells"][0], "t1");
}

#[tokio::test]
async fn binary_writes_a_kubeconfig_and_serves_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let child = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .arg("--kubeconfig-out")
        .arg(&path)
        .arg("--bookmark-interval")
        .arg("0.5")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = ChildGuard(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&path)
            && t.contains("current-context")
        {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kubeconfig written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.contains("server: http://127.0.0.1:"), "{text}");
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&text).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let widgets = install_widget_crd(&client).await;
    widgets
        .patch(
            "w",
            &PatchParams::apply("t"),
            &Patch::Apply(widget("w", json!({"size": 2}))),
        )
        .await
        .unwrap();
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["size"], 2);
}

/// xorshift64*: deterministic noise for the robustness test.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_requests_never_crash_the_server() {
    let (server, client) = start().await;
    install_widget_crd(&client).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("target", json!({"a": "b"}), json!({"k": "v"})),
    )
    .await
    .unwrap();
    let url = server.url();
    let failures = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut noise = Noise(0x5eed_1234_abcd_0001);
        let paths = [
            "/api/v1/namespaces/default/configmaps",
            "/api/v1/namespaces/default/configmaps/target",
            "/api/v1/namespaces/default/configmaps/target/status",
            "/apis/example.io/v1/namespaces/default/widgets",
            "/apis/example.io/v1/namespaces/default/widgets/w",
            "/apis/example.io/v1/namespaces/default/widgets/w/status",
            "/apis/apps/v1/namespaces/default/statefulsets/s",
            "/api/v1/namespaces/x/y/z/w",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.io",
            "/api/v1/namespaces",
        ];
        let bodies = [
            "", "{", "null", "[]", "1", "\"s\"", "{}", "{\"metadata\":\"x\"}",
            "{\"metadata\":{\"name\":\"w\",\"labels\":[1]}}",
            "{\"metadata\":{\"name\":\"w\",\"finalizers\":{}}}",
            "{\"apiVersion\":\"example.io/v1\",\"kind\":\"Widget\",\"metadata\":{\"name\":\"w\"},\"spec\":{\"size\":\"x\"}}",
            "{\"apiVersion\":\"example.io/v1\",\"kind\":\"Widget\",\"metadata\":{\"name\":\"w\"},\"spec\":{\"size\":2}}",
            "[{\"op\":\"remove\",\"path\":\"/metadata\"}]",
            "[{\"op\":\"replace\",\"path\":\"/metadata/name\",\"value\":\"other\"}]",
            "[{\"op\":\"add\",\"path\":\"/spec/x/y/z\",\"value\":1}]",
            "{\"data\":{\"k\":null},\"status\":[1,2]}",
            "{\"spec\":{\"group\":1}}",
            "a: [b\n",
            "{\"metadata\":{\"resourceVersion\":\"999999\"}}",
            "{\"propagationPolicy\":\"Orphan\",\"preconditions\":{\"uid\":\"nope\"}}",
        ];
        let types = [
            "application/json",
            "application/merge-patch+json",
            "application/json-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
            "application/yaml",
            "text/plain",
        ];
        let queries = ["", "?watch=true&timeoutSeconds=0", "?labelSelector=a%20in%20(", "?fieldManager=f&force=true",
                       "?limit=x", "?continue=zz", "?resourceVersion=abc&watch=1&timeoutSeconds=0", "?fieldSelector=x"];
        let mut failures = Vec::new();
        // A watch deadline far in the future must not overflow; the stream opens and is dropped.
        for q in ["timeoutSeconds=18446744073709551615", "timeoutSeconds=99999999999999999999"] {
            let resp = agent.get(format!("{url}{}?watch=true&{q}", paths[0])).call();
            match resp {
                Ok(r) if r.status().as_u16() < 500 => {}
                other => failures.push(format!("watch with {q}: {other:?}")),
            }
        }
        for _ in 0..600 {
            let method = noise.pick(&["GET", "POST", "PUT", "PATCH", "DELETE"]);
            let path = format!("{url}{}{}", noise.pick(&paths), noise.pick(&queries));
            let body = noise.pick(&bodies);
            let ct = noise.pick(&types);
            let resp = match method {
                "GET" => agent.get(&path).call(),
                "DELETE" => agent.delete(&path).force_send_body().header("Content-Type", ct).send(body),
                "POST" => agent.post(&path).header("Content-Type", ct).send(body),
                "PUT" => agent.put(&path).header("Content-Type", ct).send(body),
                _ => agent.patch(&path).header("Content-Type", ct).send(body),
            };
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{method} {path}: transport error {e}"));
                    continue;
                }
            };
            let code = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            if code >= 500 {
                failures.push(format!("{method} {path} [{ct}] {body:?}: {code} {text}"));
            } else if code >= 400 {
                let status: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if status["kind"] != "Status" || status["code"] != code {
                    failures.push(format!("{method} {path}: {code} without a Status: {text}"));
                }
            }
        }
        failures
    })
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    // Still serving, and the store is consistent enough to list everything.
    assert!(cms.list(&ListParams::default()).await.is_ok());
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(crd_api.list(&ListParams::default()).await.is_ok());
}
