//! End to end: the real `rimir-operator run` binary, the `fake-apiserver` binary, `kubectl` and
//! moto (S3, IAM, STS), as issue 5's "Must show" list asks. One test walks the user's story:
//! apply the sample → bucket, role (exact trust policy), inline policy, annotated
//! ServiceAccount, StatefulSets, Services, ConfigMap; change the compactor's size and replicas →
//! the StatefulSet follows; edit the trust policy in moto → corrected on a resync; delete with
//! `Retain` → bucket and objects remain; with `Delete` → bucket and role are gone; an invalid
//! spec → refused or a failed condition naming the field, and no bucket or role in moto. A
//! second test runs two replicas: one leader reconciles, the other takes over when it dies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_iam::error::ProvideErrorMetadata;
use rimir_e2e::moto::{MotoServer, child_env};
use rimir_e2e::{ChildGuard, free_port, workspace_bin};
use serde_json::{Value, json};

/// Bound of every wait for the operator to converge.
const CONVERGE: Duration = Duration::from_secs(30);
/// The six S3 actions of the inline policy.
const S3_ACTIONS: [&str; 6] = [
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:GetObject",
    "s3:ListBucket",
    "s3:ListMultipartUploadParts",
    "s3:PutObject",
];
const NS: &str = "monitoring";

/// The fake API server, the operator and kubectl's files, torn down with the test.
struct Env {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    operator_log: PathBuf,
    _apiserver: ChildGuard,
    _operator: Option<ChildGuard>,
}

impl Env {
    fn operator_log(&self) -> String {
        let text = std::fs::read_to_string(&self.operator_log).unwrap_or_default();
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("--- operator log (last 6000 bytes) ---\n{}", &text[start..])
    }

    /// Panics with `msg` and the operator's log.
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n{}", self.operator_log())
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kubectl: {e} (tests/run.sh installs it)"));
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            if let Some(input) = stdin {
                pipe.write_all(input.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.kubectl(args, stdin);
        if !ok {
            self.fail(format!("kubectl {args:?} failed:\n{out}{err}"));
        }
        out
    }

    /// `kubectl get <kind> <name> -n NS -o json`, `None` when it does not exist.
    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let (ok, out, err) = self.kubectl(&["get", kind, name, "-n", NS, "-o", "json"], None);
        if ok {
            Some(serde_json::from_str(&out).unwrap_or_else(|e| self.fail(format!("{e}: {out}"))))
        } else if err.contains("NotFound") || err.contains("not found") {
            None
        } else {
            self.fail(format!("kubectl get {kind} {name}: {err}"))
        }
    }

    /// Polls `check` (which returns `Ok(value)` when done, `Err(why not yet)` otherwise) until
    /// it succeeds or [`CONVERGE`] passes.
    async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let start = Instant::now();
        loop {
            match check().await {
                Ok(v) => {
                    eprintln!("{what}: after {:?}", start.elapsed());
                    return v;
                }
                Err(why) if start.elapsed() > CONVERGE => self.fail(format!(
                    "timed out after {CONVERGE:?} waiting for {what}: {why}"
                )),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Waits for the MimirCluster's `Ready` condition to be `True` for its current generation
    /// and returns the object.
    async fn wait_ready(&self, name: &str) -> Value {
        self.wait_for(&format!("MimirCluster {name} Ready"), || async {
            let mc = self
                .get("mimirclusters", name)
                .ok_or_else(|| "not found".to_string())?;
            let generation = mc["metadata"]["generation"].as_i64();
            let observed = mc["status"]["observedGeneration"].as_i64();
            match condition(&mc, "Ready") {
                Some(c) if c["status"] == "True" && generation == observed => Ok(mc),
                _ => Err(format!("status: {}", mc["status"])),
            }
        })
        .await
    }
}

fn condition<'a>(mc: &'a Value, type_: &str) -> Option<&'a Value> {
    mc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Starts the fake API server (with simulated workloads), waits until kubectl reaches it, then
/// applies the MimirCluster CRD and creates the test namespace.
fn start_apiserver() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let listen = format!("127.0.0.1:{}", free_port());
    let apiserver = Command::new(workspace_bin("fake-apiserver"))
        .args(["--listen", &listen, "--kubeconfig-out"])
        .arg(&kubeconfig)
        .arg("--simulate-workloads")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("apiserver.log")).unwrap())
        .spawn()
        .expect("spawn fake-apiserver");
    let env = Env {
        operator_log: dir.path().join("operator.log"),
        kubeconfig,
        dir,
        _apiserver: ChildGuard(apiserver),
        _operator: None,
    };
    let start = Instant::now();
    loop {
        let written = std::fs::read_to_string(&env.kubeconfig).is_ok_and(|k| k.contains("server:"));
        if written && env.kubectl(&["get", "namespaces"], None).0 {
            let crd = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../crds/mimirclusters.rimir.io.yaml"
            );
            env.kubectl_ok(&["apply", "--server-side", "-f", crd], None);
            env.kubectl_ok(&["create", "namespace", NS], None);
            return env;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let log = std::fs::read_to_string(env.dir.path().join("apiserver.log"));
            panic!("fake-apiserver did not answer kubectl within 20 s; its log: {log:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Spawns `rimir-operator run` against the fake API server and moto, logging to `log`, with
/// `extra` arguments and environment; returns it and the URL of its `/metrics`.
fn spawn_operator(
    env: &Env,
    moto: &MotoServer,
    log: &Path,
    extra: &[&str],
    vars: &[(&str, &str)],
) -> (ChildGuard, String) {
    let log = std::fs::File::create(log).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(workspace_bin("rimir-operator"))
        .args([
            "run",
            "--aws-endpoint-url",
            &moto.endpoint(),
            "--resync-interval",
            "2s",
            "--metrics-address",
            &addr,
        ])
        .args(extra)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(child_env())
        .envs(vars.iter().copied())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn rimir-operator");
    (ChildGuard(child), format!("http://{addr}/metrics"))
}

fn start_operator(env: &mut Env, moto: &MotoServer) {
    let log = env.operator_log.clone();
    env._operator = Some(spawn_operator(env, moto, &log, &[], &[]).0);
}

/// The sample MimirCluster with `name`, a unique bucket and role name, and `edit` applied.
fn sample(name: &str, bucket: &str, role: &str, edit: impl FnOnce(&mut Value)) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples/mimircluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut mc: Value = serde_yaml::from_str(&text).unwrap();
    mc["metadata"]["name"] = json!(name);
    mc["metadata"]["namespace"] = json!(NS);
    mc["spec"]["storage"]["bucketName"] = json!(bucket);
    mc["spec"]["aws"]["roleName"] = json!(role);
    edit(&mut mc);
    serde_yaml::to_string(&mc).unwrap()
}

/// Percent-decoding as IAM returns policy documents (`+` is not used by IAM for spaces).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let (b'%', Some(v)) = (b[i], hex) {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A policy document as JSON, whether IAM returned it URL-encoded or not.
fn policy_json(doc: &str) -> Value {
    serde_json::from_str(doc)
        .or_else(|_| serde_json::from_str(&url_decode(doc)))
        .unwrap_or_else(|e| panic!("policy document is not JSON ({e}): {doc}"))
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

/// Checks the trust policy: web-identity federation with `sub` and `aud` pinned.
fn check_trust(trust: &Value, sa: &str) -> Result<(), String> {
    let statements = as_list(&trust["Statement"]);
    let want_sub = format!("system:serviceaccount:{NS}:{sa}");
    for s in &statements {
        let actions = as_list(&s["Action"]);
        if s["Effect"] != "Allow" || !actions.contains(&json!("sts:AssumeRoleWithWebIdentity")) {
            continue;
        }
        let federated = s["Principal"]["Federated"].as_str().unwrap_or_default();
        if !federated.contains(":oidc-provider/") {
            return Err(format!("Federated principal {federated:?}"));
        }
        let eq = s["Condition"]["StringEquals"]
            .as_object()
            .ok_or("no StringEquals condition")?;
        let sub = eq.iter().find(|(k, _)| k.ends_with(":sub")).map(|(_, v)| v);
        let aud = eq.iter().find(|(k, _)| k.ends_with(":aud")).map(|(_, v)| v);
        if sub != Some(&json!(want_sub)) {
            return Err(format!("sub is {sub:?}, want {want_sub}"));
        }
        if aud != Some(&json!("sts.amazonaws.com")) {
            return Err(format!("aud is {aud:?}"));
        }
        return Ok(());
    }
    Err(format!("no AssumeRoleWithWebIdentity statement in {trust}"))
}

async fn bucket_exists(s3: &aws_sdk_s3::Client, bucket: &str) -> bool {
    match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => false,
        Err(e) => panic!("HeadBucket {bucket}: {e:?}"),
    }
}

/// The role's trust policy, `None` when the role does not exist.
async fn trust_policy(iam: &aws_sdk_iam::Client, role: &str) -> Option<(String, Value)> {
    match iam.get_role().role_name(role).send().await {
        Ok(out) => {
            let r = out.role().expect("GetRole returns the role");
            let doc = r.assume_role_policy_document().unwrap_or_default();
            Some((r.arn().to_string(), policy_json(doc)))
        }
        Err(e) if e.code() == Some("NoSuchEntity") => None,
        Err(e) => panic!("GetRole {role}: {e:?}"),
    }
}

async fn bucket_names(s3: &aws_sdk_s3::Client) -> BTreeSet<String> {
    s3.list_buckets()
        .send()
        .await
        .expect("ListBuckets")
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn storage_request(sts: &Value) -> Option<String> {
    sts["spec"]["volumeClaimTemplates"]
        .as_array()?
        .first()?["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_provisions_corrects_drift_and_deletes_against_fake_apiserver_and_moto() {
    let started = Instant::now();
    let moto = MotoServer::shared();
    let s3 = moto.s3_client();
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config());
    let mut env = start_apiserver();
    start_operator(&mut env, &moto);

    // 1. Apply the sample (unique bucket and role) → everything exists.
    let bucket = unique("rimir-e2e-retain");
    let role = unique("rimir-e2e-retain");
    let manifest = sample("mimir", &bucket, &role, |_| {});
    let sample_size =
        serde_yaml::from_str::<Value>(&manifest).unwrap()["spec"]["compactor"]["persistentVolume"]
            ["size"]
            .as_str()
            .unwrap_or("50Gi")
            .to_string();
    let sa = serde_yaml::from_str::<Value>(&manifest).unwrap()["spec"]["serviceAccount"]["name"]
        .as_str()
        .unwrap_or("mimir")
        .to_string();
    let applied = Instant::now();
    env.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&manifest));
    let mc = env.wait_ready("mimir").await;
    eprintln!("apply → Ready: {:?}", applied.elapsed());
    let role_arn = mc["status"]["roleArn"]
        .as_str()
        .unwrap_or_else(|| env.fail(format!("no status.roleArn: {}", mc["status"])))
        .to_string();

    if !bucket_exists(&s3, &bucket).await {
        env.fail(format!("bucket {bucket} does not exist in moto"));
    }
    let (arn, trust) = trust_policy(&iam, &role)
        .await
        .unwrap_or_else(|| env.fail(format!("role {role} does not exist in moto")));
    assert_eq!(arn, role_arn, "status.roleArn is the role's ARN");
    if let Err(why) = check_trust(&trust, &sa) {
        env.fail(format!("trust policy of {role}: {why}\n{trust:#}"));
    }
    let policies = iam
        .list_role_policies()
        .role_name(&role)
        .send()
        .await
        .expect("ListRolePolicies");
    assert_eq!(policies.policy_names().len(), 1, "one inline policy");
    let inline = iam
        .get_role_policy()
        .role_name(&role)
        .policy_name(&policies.policy_names()[0])
        .send()
        .await
        .expect("GetRolePolicy");
    let inline = policy_json(inline.policy_document());
    let mut actions = BTreeSet::new();
    let mut resources = BTreeSet::new();
    for s in as_list(&inline["Statement"]) {
        assert_eq!(s["Effect"], "Allow", "{inline:#}");
        actions.extend(
            as_list(&s["Action"])
                .iter()
                .map(|a| a.as_str().unwrap().to_string()),
        );
        resources.extend(
            as_list(&s["Resource"])
                .iter()
                .map(|a| a.as_str().unwrap().to_string()),
        );
    }
    let want: BTreeSet<String> = S3_ACTIONS.iter().map(|a| a.to_string()).collect();
    assert_eq!(actions, want, "exactly the six S3 actions: {inline:#}");
    assert!(
        resources.iter().all(|r| r.ends_with(&format!(":::{bucket}"))
            || r.ends_with(&format!(":::{bucket}/*"))),
        "resources limited to the bucket: {resources:?}"
    );

    let sa_obj = env
        .get("serviceaccounts", &sa)
        .unwrap_or_else(|| env.fail(format!("ServiceAccount {sa} missing")));
    assert_eq!(
        sa_obj["metadata"]["annotations"]["eks.amazonaws.com/role-arn"], role_arn,
        "ServiceAccount annotated with the role ARN: {sa_obj:#}"
    );
    // StatefulSets and their headless Services for every component (the querier too);
    // ClusterIP Services for the two entry points (push, Prometheus API).
    for component in ["distributor", "ingester", "compactor", "querier"] {
        let name = format!("mimir-{component}");
        if env.get("statefulsets", &name).is_none() {
            env.fail(format!("StatefulSet {name} missing"));
        }
        let headless = format!("{name}-headless");
        if env.get("services", &headless).is_none() {
            env.fail(format!("Service {headless} missing"));
        }
    }
    for name in ["mimir-distributor", "mimir-querier"] {
        if env.get("services", name).is_none() {
            env.fail(format!("Service {name} missing"));
        }
    }
    if env.get("configmaps", "mimir-config").is_none() {
        env.fail("ConfigMap mimir-config missing");
    }
    let compactor = env.get("statefulsets", "mimir-compactor").unwrap();
    assert_eq!(
        storage_request(&compactor).as_deref(),
        Some(sample_size.as_str()),
        "compactor volumeClaimTemplates size is the spec's"
    );
    // `kubectl get mimirclusters`: the list as JSON, and the printer columns.
    let list: Value = serde_json::from_str(
        &env.kubectl_ok(&["get", "mimirclusters", "-n", NS, "-o", "json"], None),
    )
    .unwrap();
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert!(
        items
            .iter()
            .any(|i| i["metadata"]["name"] == "mimir" && i["status"]["roleArn"] == json!(role_arn)),
        "kubectl get mimirclusters -o json lists mimir with its status: {list:#}"
    );
    let table = env.kubectl_ok(&["get", "mimirclusters", "-n", NS], None);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "READY", "PHASE", "BUCKET", "INGESTERS", "AGE"] {
        assert!(header.contains(column), "printer column {column}:\n{table}");
    }
    assert!(
        table.contains(&bucket) && table.contains("True") && table.contains("Ready"),
        "kubectl get mimirclusters shows Ready and the bucket:\n{table}"
    );
    eprintln!("step 1 checked after {:?}", started.elapsed());

    // 2. Change the compactor's size and replicas → its StatefulSet follows.
    env.kubectl_ok(
        &[
            "patch",
            "mimirclusters",
            "mimir",
            "-n",
            NS,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"compactor":{"replicas":2,"persistentVolume":{"enabled":true,"size":"80Gi"}}}}"#,
        ],
        None,
    );
    env.wait_for("compactor StatefulSet with 80Gi and 2 replicas", || async {
        let sts = env
            .get("statefulsets", "mimir-compactor")
            .ok_or("missing")?;
        let size = storage_request(&sts);
        let replicas = sts["spec"]["replicas"].as_i64();
        if size.as_deref() == Some("80Gi") && replicas == Some(2) {
            Ok(())
        } else {
            Err(format!("size {size:?}, replicas {replicas:?}"))
        }
    })
    .await;
    env.wait_ready("mimir").await;

    // 3. Edit the trust policy out of band → corrected on a resync.
    let evil = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "sts:AssumeRole"
        }]
    });
    iam.update_assume_role_policy()
        .role_name(&role)
        .policy_document(evil.to_string())
        .send()
        .await
        .expect("UpdateAssumeRolePolicy");
    let (_, now) = trust_policy(&iam, &role).await.unwrap();
    assert!(
        check_trust(&now, &sa).is_err(),
        "the edit took effect in moto"
    );
    env.wait_for("trust policy drift corrected", || async {
        let (_, now) = trust_policy(&iam, &role).await.ok_or("role gone")?;
        if now == trust {
            Ok(())
        } else {
            Err(format!("trust policy is {now}"))
        }
    })
    .await;

    // 4. Delete with Retain → the MimirCluster goes away, the bucket and its objects remain.
    s3.put_object()
        .bucket(&bucket)
        .key("anonymous/keep-me")
        .body(b"data".to_vec().into())
        .send()
        .await
        .expect("PutObject");
    env.kubectl_ok(
        &["delete", "mimirclusters", "mimir", "-n", NS, "--wait=false"],
        None,
    );
    env.wait_for("MimirCluster mimir gone", || async {
        match env.get("mimirclusters", "mimir") {
            None => Ok(()),
            Some(mc) => Err(format!("still there: {}", mc["status"])),
        }
    })
    .await;
    assert!(bucket_exists(&s3, &bucket).await, "Retain keeps the bucket");
    let kept = s3
        .get_object()
        .bucket(&bucket)
        .key("anonymous/keep-me")
        .send()
        .await
        .expect("Retain keeps the objects");
    assert_eq!(
        kept.body.collect().await.unwrap().into_bytes().as_ref(),
        b"data"
    );

    // 5. A second cluster with deletionPolicy Delete (account from STS) → gone after delete.
    let bucket2 = unique("rimir-e2e-delete");
    let role2 = unique("rimir-e2e-delete");
    let manifest = sample("mimir-delete", &bucket2, &role2, |mc| {
        mc["spec"]["deletionPolicy"] = json!("Delete");
        mc["spec"]["aws"]
            .as_object_mut()
            .unwrap()
            .remove("accountId");
    });
    env.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&manifest));
    env.wait_ready("mimir-delete").await;
    assert!(
        bucket_exists(&s3, &bucket2).await,
        "bucket {bucket2} created"
    );
    assert!(
        trust_policy(&iam, &role2).await.is_some(),
        "role {role2} created"
    );
    s3.put_object()
        .bucket(&bucket2)
        .key("anonymous/some-block/meta.json")
        .body(b"{}".to_vec().into())
        .send()
        .await
        .expect("PutObject");
    env.kubectl_ok(
        &[
            "delete",
            "mimirclusters",
            "mimir-delete",
            "-n",
            NS,
            "--wait=false",
        ],
        None,
    );
    env.wait_for("MimirCluster mimir-delete gone", || async {
        match env.get("mimirclusters", "mimir-delete") {
            None => Ok(()),
            Some(mc) => Err(format!("still there: {}", mc["status"])),
        }
    })
    .await;
    env.wait_for("bucket and role deleted in moto", || async {
        let b = bucket_exists(&s3, &bucket2).await;
        let r = trust_policy(&iam, &role2).await.is_some();
        if !b && !r {
            Ok(())
        } else {
            Err(format!("bucket exists: {b}, role exists: {r}"))
        }
    })
    .await;

    // 6. An invalid spec → refused, or a failed condition naming spec.storage.bucketName; no
    // bucket or role in moto.
    let before = bucket_names(&s3).await;
    let role3 = unique("rimir-e2e-invalid");
    let manifest = sample("mimir-invalid", "Invalid_Bucket!", &role3, |_| {});
    let (ok, out, err) = env.kubectl(&["apply", "--server-side", "-f", "-"], Some(&manifest));
    if ok {
        let message = env
            .wait_for(
                "a failed condition naming spec.storage.bucketName",
                || async {
                    let mc = env
                        .get("mimirclusters", "mimir-invalid")
                        .ok_or("not found")?;
                    mc["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| {
                            c["status"] == "False"
                                && c["message"]
                                    .as_str()
                                    .is_some_and(|m| m.contains("spec.storage.bucketName"))
                        })
                        .map(|c| c["message"].as_str().unwrap().to_string())
                        .ok_or_else(|| format!("status: {}", mc["status"]))
                },
            )
            .await;
        eprintln!("invalid spec accepted by the server; operator says: {message}");
        // A few resyncs, then still nothing in AWS.
        tokio::time::sleep(Duration::from_secs(3)).await;
    } else {
        eprintln!("invalid spec refused by the server: {out}{err}");
    }
    // The leader-election test shares this moto server and creates its own `rimir-e2e-…`
    // buckets meanwhile; none other may appear.
    let after = bucket_names(&s3).await;
    let new: Vec<&String> = after
        .difference(&before)
        .filter(|b| !b.starts_with("rimir-e2e-") || b.to_lowercase().contains("invalid"))
        .collect();
    assert!(
        new.is_empty(),
        "buckets created for the invalid spec: {new:?}"
    );
    assert!(
        trust_policy(&iam, &role3).await.is_none(),
        "no role created for the invalid spec"
    );
    eprintln!("whole test: {:?}", started.elapsed());
}

/// Starts one `rimir-operator run` replica named `pod` with short leader-election timings;
/// returns it and the URL of its `/metrics`.
fn start_replica(env: &Env, moto: &MotoServer, pod: &str) -> (ChildGuard, String) {
    spawn_operator(
        env,
        moto,
        &env.dir.path().join(format!("{pod}.log")),
        &[
            "--leader-election-namespace",
            NS,
            "--leader-election-lease-duration",
            "3s",
            "--leader-election-renew-deadline",
            "2s",
            "--leader-election-retry-period",
            "500ms",
        ],
        &[("POD_NAME", pod)],
    )
}

/// A sample of an operator's metrics, `None` while it does not answer.
fn operator_metric(url: &str, name: &str) -> Option<f64> {
    let (code, text) = rimir_e2e::rimir::get(url);
    if code != 200 {
        return None;
    }
    Some(rimir_e2e::rimir::metric_values(&text, name).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let moto = MotoServer::shared();
    let s3 = moto.s3_client();
    let env = start_apiserver();
    let holder = || {
        env.get("leases", "rimir-operator")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let (a, a_metrics) = start_replica(&env, &moto, "operator-a");
    env.wait_for("operator-a holds the lease", || async {
        match holder() {
            Some(h) if h == "operator-a" => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let (_b, b_metrics) = start_replica(&env, &moto, "operator-b");
    env.wait_for("operator-b up as a follower", || async {
        let gauge = operator_metric(&b_metrics, "rimir_operator_leader");
        if gauge == Some(0.0) {
            Ok(())
        } else {
            Err(format!("leader gauge {gauge:?}"))
        }
    })
    .await;

    // A MimirCluster applied now is provisioned (by whichever replica leads), with its bucket.
    let provisioned = |name: &'static str| {
        let (env, s3) = (&env, &s3);
        async move {
            let bucket = unique(&format!("rimir-e2e-{name}"));
            let role = unique(&format!("rimir-e2e-{name}"));
            env.kubectl_ok(
                &["apply", "--server-side", "-f", "-"],
                Some(&sample(name, &bucket, &role, |_| {})),
            );
            env.wait_ready(name).await;
            assert!(bucket_exists(s3, &bucket).await, "bucket of {name}");
        }
    };

    // Only the leader reconciles.
    provisioned("first").await;
    assert_eq!(
        operator_metric(&a_metrics, "rimir_operator_leader"),
        Some(1.0)
    );
    assert_eq!(
        operator_metric(&b_metrics, "rimir_operator_reconciles_total"),
        Some(0.0),
        "the follower reconciled nothing"
    );

    // The leader dies without releasing the lease: the follower takes over once it expires.
    let killed = Instant::now();
    drop(a);
    env.wait_for("operator-b takes the lease", || async {
        match holder() {
            Some(h) if h == "operator-b" => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    eprintln!(
        "failover: {:?} after the leader was killed",
        killed.elapsed()
    );
    let lease = env.get("leases", "rimir-operator").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    provisioned("second").await;
    assert_eq!(
        operator_metric(&b_metrics, "rimir_operator_leader"),
        Some(1.0)
    );
}
