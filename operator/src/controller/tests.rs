//! Reconcile tests in controller-rs style: a tower-test mock API server records and answers every
//! request the reconciler makes; AWS is a moto server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::aws::moto::Moto;
use crate::workloads::tests::sample;

/// One request the reconciler sent.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

impl Seen {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Answers like an API server would: applies echo the object (StatefulSets report every replica
/// ready), status patches return the object with the new status, JSON patches (finalizers) apply.
fn answer(mc: &MimirCluster, seen: &Seen) -> Value {
    let mut body = seen.body.clone();
    if seen.path.contains("/mimirclusters/") {
        let mut obj = serde_json::to_value(mc).unwrap();
        if seen.path.contains("/status") {
            obj["status"] = body["status"].take();
        } else if let Some(ops) = body.as_array() {
            for op in ops {
                if op["op"] == "add" && op["path"] == "/metadata/finalizers" {
                    obj["metadata"]["finalizers"] = op["value"].clone();
                }
                if op["op"] == "remove" {
                    obj["metadata"]["finalizers"] = json!([]);
                }
            }
        }
        return obj;
    }
    if body.is_object() {
        body["metadata"]["resourceVersion"] = json!("1");
        if seen.path.contains("/statefulsets/") {
            let replicas = body["spec"]["replicas"].clone();
            body["status"] = json!({"replicas": replicas, "readyReplicas": replicas});
        }
    }
    body
}

/// Runs one reconcile of `mc` against the mock API server and `aws`; returns the result and
/// every request in order.
async fn reconcile_once(mc: MimirCluster, aws: Aws) -> (Result<Action>, Vec<Seen>) {
    reconcile_with(mc, aws, |_, _| None).await
}

/// Like [`reconcile_once`], but `hook(request, index)` may answer a request with an error
/// status and body instead.
async fn reconcile_with(
    mc: MimirCluster,
    aws: Aws,
    hook: impl Fn(&Seen, usize) -> Option<(u16, Value)> + Send + 'static,
) -> (Result<Action>, Vec<Seen>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let seen = seen.clone();
        let mc = mc.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let s = Seen { method, path, body };
                let index = seen.lock().unwrap().len();
                let (code, reply) = hook(&s, index).unwrap_or_else(|| (200, answer(&mc, &s)));
                seen.lock().unwrap().push(s);
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()));
                send.send_response(response.unwrap());
            }
        })
    };
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(client, aws, metrics, Duration::from_secs(300)));
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        reconcile(Arc::new(mc), ctx.clone()),
    )
    .await
    .expect("reconcile finished");
    drop(ctx);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("mock server stopped")
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    (result, seen)
}

fn finalized(mut mc: MimirCluster) -> MimirCluster {
    mc.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    mc
}

fn deleting(mut mc: MimirCluster) -> MimirCluster {
    mc.metadata.deletion_timestamp = Some(Time("2026-11-25T12:00:00Z".parse().unwrap()));
    mc
}

fn applies(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == "PATCH")
        .map(Seen::line)
        .collect()
}

fn events(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.path.contains("/events"))
        .map(|s| s.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn status_of(seen: &[Seen]) -> Value {
    seen.iter()
        .rfind(|s| s.path.contains("/status"))
        .expect("status patched")
        .body["status"]
        .clone()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

const APPLY: &str = "?&force=true&fieldManager=rimir-operator";

#[tokio::test]
async fn new_cluster_provisions_aws_then_applies_children_in_order_and_reports_ready() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let mut mc = finalized(sample());
    mc.spec.aws.account_id = None; // resolved through STS
    let (result, seen) = reconcile_once(mc, aws.clone()).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));

    let ns = "/api/v1/namespaces/monitoring";
    let apps = "/apis/apps/v1/namespaces/monitoring";
    let expected: Vec<String> = [
        format!("{ns}/serviceaccounts/mimir"),
        format!("{ns}/configmaps/prod-config"),
        format!("{ns}/services/prod-distributor-headless"),
        format!("{ns}/services/prod-distributor"),
        format!("{ns}/services/prod-ingester-headless"),
        format!("{ns}/services/prod-compactor-headless"),
        format!("{ns}/services/prod-querier-headless"),
        format!("{ns}/services/prod-querier"),
        format!("{apps}/statefulsets/prod-distributor"),
        format!("{apps}/statefulsets/prod-ingester"),
        format!("{apps}/statefulsets/prod-compactor"),
        format!("{apps}/statefulsets/prod-querier"),
        "/apis/policy/v1/namespaces/monitoring/poddisruptionbudgets/prod-ingester".to_string(),
    ]
    .into_iter()
    .map(|p| format!("PATCH {p}{APPLY}"))
    .chain([format!(
        "PATCH /apis/rimir.io/v1alpha1/namespaces/monitoring/mimirclusters/prod/status{APPLY}"
    )])
    .collect();
    assert_eq!(applies(&seen), expected);
    assert_eq!(
        events(&seen),
        [
            "BucketCreated",
            "RoleCreated",
            "InlinePolicyCreated",
            "Applied"
        ]
    );

    let role_arn = "arn:aws:iam::123456789012:role/rimir-monitoring-prod";
    let sa = &seen
        .iter()
        .find(|s| s.path.contains("/serviceaccounts/"))
        .unwrap()
        .body;
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        role_arn
    );
    let compactor = &seen
        .iter()
        .find(|s| s.path.contains("/statefulsets/prod-compactor"))
        .unwrap()
        .body;
    assert_eq!(
        compactor["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "50Gi"
    );

    let status = status_of(&seen);
    assert_eq!(status["phase"], "Ready");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["bucketArn"], "arn:aws:s3:::acme-metrics");
    assert_eq!(status["roleArn"], role_arn);
    assert_eq!(status["ingesters"], "3/3");
    assert_eq!(
        status["components"]["compactor"],
        json!({"ready": 1, "desired": 1})
    );
    for step in STEPS.iter().chain(&["Ready"]) {
        assert_eq!(condition(&status, step)["status"], "True", "{step}");
    }
    assert_eq!(condition(&status, "Degraded")["status"], "False");

    // AWS side: the trust policy exactly, the inline policy, the bucket.
    let iam = aws.iam(Partition::Aws);
    let role = iam
        .get_role()
        .role_name("rimir-monitoring-prod")
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    let trust = iam::trust_policy(
        Partition::Aws,
        "123456789012",
        "oidc.eks.eu-west-3.amazonaws.com/id/ABCDEF",
        "monitoring",
        "mimir",
    );
    assert_eq!(
        iam::decode_policy(role.assume_role_policy_document.as_deref().unwrap()).unwrap(),
        trust
    );
    let doc = iam
        .get_role_policy()
        .role_name("rimir-monitoring-prod")
        .policy_name(iam::INLINE_POLICY_NAME)
        .send()
        .await;
    assert!(iam::same_policy(
        &doc.unwrap().policy_document,
        &iam::inline_policy(Partition::Aws, "acme-metrics")
    ));
    assert!(
        aws.s3("eu-west-3")
            .head_bucket()
            .bucket("acme-metrics")
            .send()
            .await
            .is_ok()
    );

    // A second pass changes nothing in AWS and emits no create events.
    let mut again = finalized(sample());
    again.status = Some(serde_json::from_value(status).unwrap());
    let (result, seen) = reconcile_once(again, aws).await;
    result.unwrap();
    assert!(events(&seen).is_empty(), "{:?}", events(&seen));
}

#[tokio::test]
async fn missing_finalizer_is_added_before_anything_else() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (result, seen) = reconcile_once(sample(), aws.clone()).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].line(),
        "PATCH /apis/rimir.io/v1alpha1/namespaces/monitoring/mimirclusters/prod?"
    );
    assert_eq!(
        seen[0].body[1],
        json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
    );
    assert!(
        !aws.metrics()
            .encode()
            .contains("rimir_operator_aws_requests_total{")
    );
}

#[tokio::test]
async fn invalid_spec_is_reported_in_status_and_makes_no_aws_call() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let mut mc = finalized(sample());
    mc.spec.storage.bucket_name = "Not_A_Bucket".into();
    let (result, seen) = reconcile_once(mc, aws.clone()).await;
    result.unwrap(); // terminal: no retry storm
    assert_eq!(events(&seen), ["InvalidSpec"]);
    let status = status_of(&seen);
    assert_eq!(status["phase"], "Failed");
    let first = condition(&status, "SpecValid");
    assert_eq!(first["status"], "False");
    assert_eq!(first["reason"], "InvalidSpec");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("spec.storage.bucketName"),
        "{first}"
    );
    assert_eq!(condition(&status, "WorkloadsReady")["reason"], "Blocked");
    assert!(
        condition(&status, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("bucketName")
    );
    assert!(
        !aws.metrics()
            .encode()
            .contains("rimir_operator_aws_requests_total{"),
        "no AWS call"
    );
    assert_eq!(
        applies(&seen).len(),
        1,
        "only the status: {:?}",
        applies(&seen)
    );
}

#[tokio::test]
async fn bucket_of_someone_else_is_terminal_and_blocks_later_steps() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    aws.s3("us-east-1")
        .create_bucket()
        .bucket("acme-metrics")
        .send()
        .await
        .unwrap();
    let (result, seen) = reconcile_once(finalized(sample()), aws.clone()).await;
    result.unwrap();
    let status = status_of(&seen);
    assert_eq!(status["phase"], "Failed");
    let bucket = condition(&status, "BucketReady");
    assert_eq!(bucket["reason"], "BucketNotOurs");
    assert!(
        bucket["message"]
            .as_str()
            .unwrap()
            .contains("storage.mode: Adopt")
    );
    assert_eq!(condition(&status, "RoleReady")["status"], "Unknown");
    assert_eq!(applies(&seen).len(), 1, "no child applied");
    let roles = aws.iam(Partition::Aws).list_roles().send().await.unwrap();
    assert!(roles.roles().is_empty(), "no role created");
}

#[tokio::test]
async fn unreachable_aws_is_transient_degraded_and_retried() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "a", "b", None, None, "t",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let aws = Aws::from_config(
        conf,
        Some(format!("http://127.0.0.1:{closed}")),
        Arc::new(Metrics::new()),
    );
    let (result, seen) = reconcile_once(finalized(sample()), aws).await;
    let err = result.unwrap_err();
    assert!(!err.is_terminal(), "{err}");
    let status = status_of(&seen);
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(condition(&status, "Degraded")["status"], "True");
    assert_eq!(condition(&status, "BucketReady")["reason"], "AwsError");
    assert_eq!(backoff(1), Duration::from_secs(1));
    assert_eq!(backoff(4), Duration::from_secs(8));
    assert_eq!(backoff(30), Duration::from_secs(256));
}

#[tokio::test]
async fn deleting_with_retain_keeps_bucket_role_and_data() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (r, _) = reconcile_once(finalized(sample()), aws.clone()).await;
    r.unwrap();
    let s3 = aws.s3("eu-west-3");
    s3.put_object()
        .bucket("acme-metrics")
        .key("anonymous/x")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();

    let (result, seen) = reconcile_once(deleting(finalized(sample())), aws.clone()).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(events(&seen), ["Retained"]);
    let last = seen.last().unwrap();
    assert_eq!(
        last.line(),
        "PATCH /apis/rimir.io/v1alpha1/namespaces/monitoring/mimirclusters/prod?"
    );
    assert_eq!(last.body[0]["op"], "test", "finalizer removal is guarded");
    assert_eq!(last.body[1]["op"], "remove");
    assert!(
        s3.get_object()
            .bucket("acme-metrics")
            .key("anonymous/x")
            .send()
            .await
            .is_ok()
    );
    assert!(
        aws.iam(Partition::Aws)
            .get_role()
            .role_name("rimir-monitoring-prod")
            .send()
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn deleting_with_delete_removes_policy_role_and_bucket_with_objects() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let mut mc = finalized(sample());
    mc.spec.deletion_policy = DeletionPolicy::Delete;
    let (r, _) = reconcile_once(mc.clone(), aws.clone()).await;
    r.unwrap();
    let s3 = aws.s3("eu-west-3");
    s3.put_object()
        .bucket("acme-metrics")
        .key("anonymous/x")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();

    let (result, seen) = reconcile_once(deleting(mc), aws.clone()).await;
    result.unwrap();
    assert_eq!(events(&seen), ["RoleDeleted", "BucketDeleted"]);
    assert!(
        s3.head_bucket()
            .bucket("acme-metrics")
            .send()
            .await
            .is_err()
    );
    assert!(
        aws.iam(Partition::Aws)
            .get_role()
            .role_name("rimir-monitoring-prod")
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (r, seen) = reconcile_once(finalized(sample()), aws.clone()).await;
    r.unwrap();
    let mut again = finalized(sample());
    again.status = Some(serde_json::from_value(status_of(&seen)).unwrap());
    let (r, seen) = reconcile_once(again, aws).await;
    r.unwrap();
    assert!(
        !seen.iter().any(|s| s.path.contains("/status")),
        "{:?}",
        applies(&seen)
    );
}

#[tokio::test]
async fn new_volume_size_recreates_the_statefulset_orphaning_pods_and_grows_claims() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let refused = Arc::new(Mutex::new(false));
    let hook = {
        let refused = refused.clone();
        move |s: &Seen, _: usize| {
            let mut r = refused.lock().unwrap();
            if s.method == "PATCH" && s.path.contains("/statefulsets/prod-compactor") && !*r {
                *r = true;
                let message = "StatefulSet.apps \"prod-compactor\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden";
                return Some((
                    422,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": message, "reason": "Invalid", "code": 422}),
                ));
            }
            if s.path.contains("/persistentvolumeclaims/") {
                return Some((
                    200,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"}}),
                ));
            }
            if s.method == "DELETE" {
                return Some((
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                ));
            }
            None
        }
    };
    let (result, seen) = reconcile_with(finalized(sample()), aws, hook).await;
    result.unwrap();
    let lines: Vec<String> = seen
        .iter()
        .filter(|s| !s.path.contains("/events"))
        .map(Seen::line)
        .collect();
    let first = lines
        .iter()
        .position(|l| l.contains("/statefulsets/prod-compactor"))
        .unwrap();
    let apps = "/apis/apps/v1/namespaces/monitoring/statefulsets/prod-compactor";
    assert!(lines[first].starts_with(&format!("PATCH {apps}?")));
    assert_eq!(lines[first + 1], format!("DELETE {apps}?"));
    let delete = seen.iter().find(|s| s.method == "DELETE").unwrap();
    assert_eq!(delete.body["propagationPolicy"], "Orphan");
    assert_eq!(
        lines[first + 2],
        "PATCH /api/v1/namespaces/monitoring/persistentvolumeclaims/data-prod-compactor-0?"
    );
    let grow = seen
        .iter()
        .find(|s| s.path.contains("/persistentvolumeclaims/"))
        .unwrap();
    assert_eq!(
        grow.body["spec"]["resources"]["requests"]["storage"],
        "50Gi"
    );
    assert!(
        lines[first + 3].starts_with(&format!("PATCH {apps}?")),
        "re-applied: {}",
        lines[first + 3]
    );
    assert!(events(&seen).contains(&"StatefulSetRecreated".to_string()));
    assert_eq!(status_of(&seen)["phase"], "Ready");
}
