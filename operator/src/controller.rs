//! The reconcile loop: for each MimirCluster, run the steps of DESIGN.md in order (account,
//! bucket, role, inline policy, ServiceAccount, ConfigMap, Services/StatefulSets/PDB), report
//! each as a status condition, and clean up AWS on deletion according to `deletionPolicy`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::aws::iam::{self, Change};
use crate::aws::{self, Aws, Partition};
use crate::crd::{
    DeletionPolicy, MimirCluster, MimirClusterStatus, Phase, ReplicaStatus, validate,
};
use crate::metrics::Metrics;
use crate::workloads::objects::desired_children;
use crate::workloads::{FIELD_MANAGER, Names};
use crate::{Error, Result};

/// Finalizer guarding AWS cleanup.
pub const FINALIZER: &str = "rimir.io/cleanup";

/// The reconcile steps, in order; each is a status condition type.
pub const STEPS: [&str; 8] = [
    "SpecValid",
    "AccountResolved",
    "BucketReady",
    "RoleReady",
    "PolicyReady",
    "ServiceAccountReady",
    "ConfigReady",
    "WorkloadsReady",
];

/// Shared state of the reconcilers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// AWS clients.
    pub aws: Aws,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Period of the drift-correcting resync.
    pub resync: Duration,
    /// Consecutive failures per cluster, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Account id from STS, looked up once.
    account: Mutex<Option<String>>,
}

impl Context {
    /// A context for the controller.
    pub fn new(client: Client, aws: Aws, metrics: Arc<Metrics>, resync: Duration) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            aws,
            metrics,
            resync,
            failures: Mutex::default(),
            account: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(mc: &MimirCluster) -> String {
    format!("{}/{}", mc.namespace().unwrap_or_default(), mc.name_any())
}

/// Entry point of one reconcile: finalizer handling, then apply or cleanup.
pub async fn reconcile(mc: Arc<MimirCluster>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    let ns = mc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<MimirCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let object = key(&mc);
    let result = finalizer(&api, FINALIZER, mc, |event| async {
        match event {
            Finalizer::Apply(mc) => apply(&mc, &ctx).await,
            Finalizer::Cleanup(mc) => cleanup(&mc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(inner)
        | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
        other => Error::Finalizer {
            object: object.clone(),
            source: Box::new(other),
        },
    });
    let label = match &result {
        Ok(_) => "success",
        Err(e) => e.kind(),
    };
    ctx.metrics.reconciled(label, start.elapsed());
    tracing::debug!(cluster = %object, result = label, took = ?start.elapsed(), "reconciled");
    if result.is_ok() {
        ctx.failures().remove(&object);
    }
    result
}

/// Retry policy for transient errors: exponential backoff from 1s, capped at 5 minutes.
pub fn error_policy(mc: Arc<MimirCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures();
    let n = failures.entry(key(&mc)).or_insert(0);
    *n += 1;
    let delay = backoff(*n);
    warn!(cluster = %key(&mc), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Delay before the `n`th retry (1-based).
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// Tracks conditions and progress while the steps run.
struct Progress {
    old: Vec<Condition>,
    conditions: Vec<Condition>,
    generation: Option<i64>,
}

impl Progress {
    fn new(mc: &MimirCluster) -> Progress {
        Progress {
            old: mc
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
            conditions: Vec::new(),
            generation: mc.metadata.generation,
        }
    }

    fn set(&mut self, type_: &str, ok: Option<bool>, reason: &str, message: String) {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        // Keep the transition time while the status stays the same.
        let time = self
            .old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        self.conditions.retain(|c| c.type_ != type_);
        self.conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: self.generation,
            last_transition_time: time,
        });
    }

    fn done(&mut self, step: &str, message: String) {
        self.set(step, Some(true), "Reconciled", message);
    }

    /// Marks `step` failed and every later step blocked.
    fn failed(&mut self, step: &str, err: &Error) {
        self.set(step, Some(false), err.kind(), err.to_string());
        let after = STEPS.iter().skip_while(|s| **s != step).skip(1);
        for s in after {
            self.set(s, None, "Blocked", format!("waiting for {step}"));
        }
    }
}

/// The normal path: run every step, then write status.
async fn apply(mc: &MimirCluster, ctx: &Context) -> Result<Action> {
    let names = Names::of(mc);
    let mut progress = Progress::new(mc);
    let mut status = MimirClusterStatus {
        observed_generation: mc.metadata.generation,
        bucket_arn: mc.status.as_ref().and_then(|s| s.bucket_arn.clone()),
        role_arn: mc.status.as_ref().and_then(|s| s.role_arn.clone()),
        ..MimirClusterStatus::default()
    };
    let outcome = run_steps(mc, ctx, &names, &mut progress, &mut status).await;
    let (phase, action, result) = match outcome {
        Ok(()) => {
            let all_ready = status.components.values().all(|c| c.ready >= c.desired);
            let phase = if all_ready {
                Phase::Ready
            } else {
                Phase::Provisioning
            };
            (phase, Action::requeue(ctx.resync), Ok(()))
        }
        Err(e) if e.is_terminal() => {
            publish(
                ctx,
                mc,
                EventType::Warning,
                e.kind(),
                "Reconcile",
                e.to_string(),
            )
            .await;
            // Not retried in a loop: a spec change triggers a new reconcile; the resync retries
            // in case the cause was fixed out of band (e.g. the bucket tagged for adoption).
            (Phase::Failed, Action::requeue(ctx.resync), Ok(()))
        }
        Err(e) => {
            publish(
                ctx,
                mc,
                EventType::Warning,
                e.kind(),
                "Reconcile",
                e.to_string(),
            )
            .await;
            (Phase::Degraded, Action::await_change(), Err(e))
        }
    };
    let workloads_ok = progress
        .conditions
        .iter()
        .any(|c| c.type_ == "WorkloadsReady" && c.status == "True");
    let ready = phase == Phase::Ready;
    progress.set(
        "Ready",
        Some(ready),
        phase.as_str(),
        if ready {
            "all resources exist and every replica is ready".into()
        } else {
            summary(&progress.conditions)
        },
    );
    progress.set(
        "Progressing",
        Some(phase == Phase::Provisioning),
        phase.as_str(),
        if phase == Phase::Provisioning && workloads_ok {
            "waiting for replicas to become ready".into()
        } else {
            String::new()
        },
    );
    progress.set(
        "Degraded",
        Some(matches!(phase, Phase::Degraded | Phase::Failed)),
        phase.as_str(),
        if matches!(phase, Phase::Degraded | Phase::Failed) {
            summary(&progress.conditions)
        } else {
            String::new()
        },
    );
    status.phase = Some(phase);
    status.conditions = progress.conditions;
    patch_status(ctx, mc, &status).await?;
    ctx.metrics.set_phase(&key(mc), Some(phase.as_str()));
    result.map(|()| action)
}

/// The message of the first failed step, for Ready/Degraded.
fn summary(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .find(|c| c.status == "False")
        .map(|c| format!("{}: {}", c.type_, c.message))
        .unwrap_or_default()
}

async fn run_steps(
    mc: &MimirCluster,
    ctx: &Context,
    names: &Names,
    progress: &mut Progress,
    status: &mut MimirClusterStatus,
) -> Result<()> {
    let spec = &mc.spec;
    // 0. The spec itself: nothing reaches AWS before it is valid.
    if let Err(e) = validate(spec) {
        progress.failed(STEPS[0], &e);
        return Err(e);
    }
    progress.done(STEPS[0], "the spec passes every validation rule".into());
    let region = spec.aws.region.as_str();
    let partition = Partition::from_region(region);
    let owner = names.owner_tag();

    // 1. Account.
    let account = match &spec.aws.account_id {
        Some(a) => a.clone(),
        None => match resolve_account(ctx, region).await {
            Ok(a) => a,
            Err(e) => {
                progress.failed(STEPS[1], &e);
                return Err(e);
            }
        },
    };
    progress.done(
        STEPS[1],
        format!("account {account}, partition {}", partition.as_str()),
    );

    // 2. Bucket.
    let bucket = &spec.storage.bucket_name;
    match aws::s3::ensure_bucket(&ctx.aws, region, bucket, spec.storage.mode, &owner).await {
        Ok(change) => {
            aws_event(ctx, mc, change, "Bucket", bucket).await;
            status.bucket_arn = Some(aws::bucket_arn(partition, bucket));
            progress.done(STEPS[2], format!("bucket {bucket} in {region}"));
        }
        Err(e) => {
            progress.failed(STEPS[2], &e);
            return Err(e);
        }
    }

    // 3. Role with the trust policy.
    let role = spec
        .aws
        .role_name
        .clone()
        .unwrap_or_else(|| names.default_role_name());
    let sa = spec.service_account_name(&names.cluster);
    let trust = iam::trust_policy(
        partition,
        &account,
        &spec.aws.oidc_issuer,
        &names.namespace,
        &sa,
    );
    let role_arn = match iam::ensure_role(&ctx.aws, partition, &role, &trust, &owner).await {
        Ok((arn, change)) => {
            aws_event(ctx, mc, change, "Role", &role).await;
            progress.done(
                STEPS[3],
                format!(
                    "role {arn} trusts system:serviceaccount:{}:{sa}",
                    names.namespace
                ),
            );
            arn
        }
        Err(e) => {
            progress.failed(STEPS[3], &e);
            return Err(e);
        }
    };
    status.role_arn = Some(role_arn.clone());

    // 4. Inline policy.
    let policy = iam::inline_policy(partition, bucket);
    match iam::ensure_inline_policy(&ctx.aws, partition, &role, &policy).await {
        Ok(change) => {
            aws_event(ctx, mc, change, "InlinePolicy", iam::INLINE_POLICY_NAME).await;
            progress.done(
                STEPS[4],
                format!(
                    "{} allows the TSDB's S3 actions on {bucket}",
                    iam::INLINE_POLICY_NAME
                ),
            );
        }
        Err(e) => {
            progress.failed(STEPS[4], &e);
            return Err(e);
        }
    }

    // 5-7. Kubernetes children.
    let children = desired_children(mc, &role_arn);
    let ns = &names.namespace;
    if let Err(e) = apply_child(ctx, ns, &children.service_account).await {
        progress.failed(STEPS[5], &e);
        return Err(e);
    }
    progress.done(
        STEPS[5],
        format!("ServiceAccount {sa} annotated with {role_arn}"),
    );
    if let Err(e) = apply_child(ctx, ns, &children.config_map).await {
        progress.failed(STEPS[6], &e);
        return Err(e);
    }
    progress.done(
        STEPS[6],
        format!("ConfigMap {} holds rimir.yaml", names.config_map()),
    );
    let workloads = async {
        for svc in &children.services {
            apply_child(ctx, ns, svc).await?;
        }
        let mut components = BTreeMap::new();
        for (component, sts) in crate::workloads::COMPONENTS
            .iter()
            .zip(&children.statefulsets)
        {
            let applied = apply_statefulset(ctx, mc, ns, sts).await?;
            let desired = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let ready = applied
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            components.insert(component.to_string(), ReplicaStatus { ready, desired });
        }
        apply_child(ctx, ns, &children.ingester_pdb).await?;
        Ok::<_, Error>(components)
    };
    match workloads.await {
        Ok(components) => {
            if let Some(i) = components.get("ingester") {
                status.ingesters = Some(format!("{}/{}", i.ready, i.desired));
            }
            let summary: Vec<String> = components
                .iter()
                .map(|(c, r)| format!("{c} {}/{}", r.ready, r.desired))
                .collect();
            status.components = components;
            progress.done(STEPS[7], format!("ready/desired: {}", summary.join(", ")));
        }
        Err(e) => {
            progress.failed(STEPS[7], &e);
            return Err(e);
        }
    }
    if mc.status.as_ref().and_then(|s| s.observed_generation) != mc.metadata.generation {
        let note = format!(
            "applied generation {} to every child",
            mc.metadata.generation.unwrap_or_default()
        );
        publish(ctx, mc, EventType::Normal, "Applied", "Apply", note).await;
    }
    Ok(())
}

/// Applies a StatefulSet. Kubernetes forbids changing `volumeClaimTemplates` (a new volume
/// size): then the StatefulSet is deleted with orphaned pods and recreated (the pods are adopted
/// back, nothing restarts), and the existing claims are asked to grow to the new size.
async fn apply_statefulset(
    ctx: &Context,
    mc: &MimirCluster,
    ns: &str,
    sts: &StatefulSet,
) -> Result<StatefulSet> {
    match apply_child(ctx, ns, sts).await {
        Err(Error::Kube { source, .. }) if is_forbidden_statefulset_update(&source) => {}
        other => return other,
    }
    let name = sts.metadata.name.clone().unwrap_or_default();
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let orphan = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
        ..Default::default()
    };
    api.delete(&name, &orphan).await.map_err(|e| Error::Kube {
        operation: "delete (orphan) to recreate",
        object: format!("StatefulSet/{ns}/{name}"),
        source: Box::new(e),
    })?;
    publish(
        ctx,
        mc,
        EventType::Normal,
        "StatefulSetRecreated",
        "Apply",
        format!("recreated {name} for new volume claim templates"),
    )
    .await;
    grow_claims(ctx, mc, ns, sts).await;
    apply_child(ctx, ns, sts).await
}

fn is_forbidden_statefulset_update(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("Forbidden: updates to statefulset spec"))
}

/// Asks each existing claim of the StatefulSet to grow to the template's size. Claims that cannot
/// (storage class without expansion, shrinking) keep their size; that is reported as an Event.
async fn grow_claims(ctx: &Context, mc: &MimirCluster, ns: &str, sts: &StatefulSet) {
    let Some(spec) = sts.spec.as_ref() else {
        return;
    };
    let name = sts.metadata.name.clone().unwrap_or_default();
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), ns);
    for template in spec.volume_claim_templates.iter().flatten() {
        let Some(size) = template
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
        else {
            continue;
        };
        let claim_prefix = format!(
            "{}-{name}-",
            template.metadata.name.clone().unwrap_or_default()
        );
        for i in 0..spec.replicas.unwrap_or(0) {
            let claim = format!("{claim_prefix}{i}");
            let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
            match pvcs
                .patch(&claim, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    let note = format!("claim {claim} keeps its size: {e}");
                    publish(
                        ctx,
                        mc,
                        EventType::Warning,
                        "VolumeResizeRefused",
                        "Apply",
                        note,
                    )
                    .await;
                }
            }
        }
    }
}

async fn resolve_account(ctx: &Context, region: &str) -> Result<String> {
    if let Some(a) = ctx
        .account
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return Ok(a);
    }
    let a = aws::sts::account_id(&ctx.aws, region).await?;
    *ctx.account.lock().unwrap_or_else(|e| e.into_inner()) = Some(a.clone());
    Ok(a)
}

/// Server-side apply of one child with our single field manager.
async fn apply_child<K>(ctx: &Context, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| Error::Kube {
        operation: "apply",
        object: format!("{}/{ns}/{name}", K::kind(&())),
        source: Box::new(e),
    })
}

async fn patch_status(ctx: &Context, mc: &MimirCluster, status: &MimirClusterStatus) -> Result<()> {
    if mc.status.as_ref() == Some(status) {
        return Ok(());
    }
    let ns = mc.namespace().unwrap_or_default();
    let api: Api<MimirCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": MimirCluster::api_version(&()),
        "kind": MimirCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &mc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::Kube {
        operation: "patch status",
        object: format!("MimirCluster/{}", key(mc)),
        source: Box::new(e),
    })?;
    Ok(())
}

async fn aws_event(ctx: &Context, mc: &MimirCluster, change: Change, what: &str, name: &str) {
    let (reason, verb) = match change {
        Change::Unchanged => return,
        Change::Created => (format!("{what}Created"), "created"),
        Change::Updated => (format!("{what}Updated"), "corrected drift on"),
    };
    publish(
        ctx,
        mc,
        EventType::Normal,
        &reason,
        "Reconcile",
        format!("{verb} {name}"),
    )
    .await;
}

/// Publishes an Event; failing to record one never fails the reconcile.
async fn publish(
    ctx: &Context,
    mc: &MimirCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &mc.object_ref(&())).await {
        warn!(cluster = %key(mc), error = %e, "publishing event failed");
    }
}

/// Deletion: `Retain` keeps AWS as is; `Delete` removes the inline policy, the role and the
/// bucket the operator created. Kubernetes children go by garbage collection (owner references).
async fn cleanup(mc: &MimirCluster, ctx: &Context) -> Result<Action> {
    let names = Names::of(mc);
    let spec = &mc.spec;
    ctx.metrics.set_phase(&key(mc), None);
    if spec.deletion_policy == DeletionPolicy::Retain {
        let note = format!(
            "deletionPolicy Retain: kept bucket {} and the IAM role",
            spec.storage.bucket_name
        );
        publish(ctx, mc, EventType::Normal, "Retained", "Delete", note).await;
        return Ok(Action::await_change());
    }
    if validate(spec).is_err() {
        // Nothing can have been created from an invalid spec.
        return Ok(Action::await_change());
    }
    let partition = Partition::from_region(&spec.aws.region);
    let owner = names.owner_tag();
    let role = spec
        .aws
        .role_name
        .clone()
        .unwrap_or_else(|| names.default_role_name());
    if iam::delete_role(&ctx.aws, partition, &role, &owner).await? {
        publish(
            ctx,
            mc,
            EventType::Normal,
            "RoleDeleted",
            "Delete",
            format!("deleted role {role} and its policies"),
        )
        .await;
    }
    let bucket = &spec.storage.bucket_name;
    if aws::s3::delete_bucket(&ctx.aws, &spec.aws.region, bucket, &owner).await? {
        publish(
            ctx,
            mc,
            EventType::Normal,
            "BucketDeleted",
            "Delete",
            format!("deleted bucket {bucket} and its objects"),
        )
        .await;
    }
    info!(cluster = %key(mc), "cleaned up AWS resources");
    Ok(Action::await_change())
}

/// Runs the controller until SIGTERM/ctrl-c: watches MimirClusters and their StatefulSets.
/// At most `concurrency` clusters reconcile at once, which bounds memory and AWS request bursts.
pub async fn run(ctx: Arc<Context>, concurrency: u16) {
    let client = ctx.client.clone();
    let clusters: Api<MimirCluster> = Api::all(client.clone());
    let statefulsets: Api<StatefulSet> = Api::all(client);
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    // Our own status writes come back as watch events; `patch_status` skips unchanged statuses
    // so that echo ends after one pass.
    Controller::new(clusters, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency.max(1)))
        .owns(statefulsets, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
