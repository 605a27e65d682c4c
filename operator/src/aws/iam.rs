//! IAM: the IRSA role (trust policy pinned to one ServiceAccount of one cluster's OIDC issuer)
//! and its inline policy limited to the bucket. Documents are built purely and compared as
//! decoded JSON, because IAM returns them URL-encoded and may reformat them.

use serde_json::{Value, json};

use super::{Aws, MANAGED_BY_TAG, OWNER_TAG, Partition, bucket_arn, error_code};
use crate::{Error, Result};

/// Name of the inline policy on the role.
pub const INLINE_POLICY_NAME: &str = "rimir-s3-access";
/// Exactly the S3 actions the TSDB needs, no more (the tutorial's list).
pub const S3_ACTIONS: [&str; 6] = [
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:GetObject",
    "s3:ListMultipartUploadParts",
    "s3:PutObject",
    "s3:ListBucket",
];

/// What an ensure step did, for Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing to do.
    Unchanged,
    /// Created from scratch.
    Created,
    /// Existed and was corrected.
    Updated,
}

/// The issuer as IAM wants it in ARNs and condition keys: no scheme, no trailing slash.
pub fn issuer_host(issuer: &str) -> &str {
    issuer.trim_start_matches("https://").trim_end_matches('/')
}

/// Trust policy letting exactly `system:serviceaccount:<ns>:<sa>` assume the role through the
/// cluster's OIDC provider, with the audience pinned to STS.
pub fn trust_policy(
    partition: Partition,
    account: &str,
    issuer: &str,
    namespace: &str,
    sa: &str,
) -> Value {
    let host = issuer_host(issuer);
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {
                "Federated": format!("arn:{}:iam::{account}:oidc-provider/{host}", partition.as_str()),
            },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    format!("{host}:sub"): format!("system:serviceaccount:{namespace}:{sa}"),
                    format!("{host}:aud"): "sts.amazonaws.com",
                }
            }
        }]
    })
}

/// Inline policy allowing the six S3 actions on the bucket and its objects only.
pub fn inline_policy(partition: Partition, bucket: &str) -> Value {
    let arn = bucket_arn(partition, bucket);
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": S3_ACTIONS,
            "Resource": [arn.clone(), format!("{arn}/*")],
        }]
    })
}

/// Parses a policy document as returned by IAM (URL-encoded JSON) or as written (plain JSON).
pub fn decode_policy(document: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(document) {
        return Some(v);
    }
    let decoded = urlencoding::decode(document).ok()?;
    serde_json::from_str(&decoded).ok()
}

/// Puts a policy in a canonical form: `Action`/`Resource` as sorted arrays, a single statement
/// as an array. Two documents granting the same thing compare equal after this.
pub fn normalize_policy(v: &Value) -> Value {
    fn list(v: &Value) -> Value {
        let mut items: Vec<Value> = match v {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        items.sort_by_key(|x| x.to_string());
        Value::Array(items)
    }
    let mut v = v.clone();
    if let Some(obj) = v.as_object_mut()
        && let Some(st) = obj.get("Statement").cloned()
    {
        let statements = match st {
            Value::Array(a) => a,
            other => vec![other],
        };
        let statements = statements
            .into_iter()
            .map(|mut s| {
                if let Some(so) = s.as_object_mut() {
                    for key in ["Action", "NotAction", "Resource", "NotResource"] {
                        if let Some(x) = so.get(key).cloned() {
                            so.insert(key.to_string(), list(&x));
                        }
                    }
                }
                s
            })
            .collect();
        obj.insert("Statement".into(), Value::Array(statements));
    }
    v
}

/// True when an IAM-returned document grants the same as the desired one.
pub fn same_policy(returned: &str, desired: &Value) -> bool {
    decode_policy(returned).is_some_and(|v| normalize_policy(&v) == normalize_policy(desired))
}

fn is_no_such_entity(e: &Error) -> bool {
    error_code(e) == Some("NoSuchEntity")
}

/// Creates the role or corrects its trust policy. Refuses a role not tagged as this cluster's.
/// Returns the role ARN.
pub async fn ensure_role(
    aws: &Aws,
    partition: Partition,
    role: &str,
    trust: &Value,
    owner: &str,
) -> Result<(String, Change)> {
    let iam = aws.iam(partition);
    let trust_text = trust.to_string();
    let got = aws.track(
        "iam",
        "GetRole",
        role,
        iam.get_role().role_name(role).send().await,
    );
    let existing = match got {
        Ok(out) => out.role,
        Err(e) if is_no_such_entity(&e) => None,
        Err(e) => return Err(e),
    };
    let Some(existing) = existing else {
        let tags = [
            aws_sdk_iam::types::Tag::builder()
                .key(OWNER_TAG)
                .value(owner)
                .build(),
            aws_sdk_iam::types::Tag::builder()
                .key(MANAGED_BY_TAG.0)
                .value(MANAGED_BY_TAG.1)
                .build(),
        ];
        let mut req = iam
            .create_role()
            .role_name(role)
            .assume_role_policy_document(&trust_text)
            .description(format!(
                "rimir MimirCluster {owner}: S3 access for its pods through IRSA"
            ));
        for t in tags {
            req = req
                .tags(t.map_err(|e| Error::InvalidSpec(format!("IAM tag for role {role}: {e}")))?);
        }
        let out = aws.track("iam", "CreateRole", role, req.send().await)?;
        let arn = out.role.map(|r| r.arn).unwrap_or_default();
        return Ok((arn, Change::Created));
    };
    let tags = aws.track(
        "iam",
        "ListRoleTags",
        role,
        iam.list_role_tags().role_name(role).send().await,
    )?;
    let ours = tags
        .tags
        .iter()
        .any(|t| t.key == OWNER_TAG && t.value == owner);
    if !ours {
        return Err(Error::RoleNotOurs {
            role: role.to_string(),
        });
    }
    let current = existing.assume_role_policy_document.unwrap_or_default();
    if same_policy(&current, trust) {
        return Ok((existing.arn, Change::Unchanged));
    }
    aws.track(
        "iam",
        "UpdateAssumeRolePolicy",
        role,
        iam.update_assume_role_policy()
            .role_name(role)
            .policy_document(&trust_text)
            .send()
            .await,
    )?;
    Ok((existing.arn, Change::Updated))
}

/// Puts the inline policy when missing or different, and removes any other inline policy from
/// the role so it grants exactly what the TSDB needs.
pub async fn ensure_inline_policy(
    aws: &Aws,
    partition: Partition,
    role: &str,
    policy: &Value,
) -> Result<Change> {
    let iam = aws.iam(partition);
    let got = aws.track(
        "iam",
        "GetRolePolicy",
        role,
        iam.get_role_policy()
            .role_name(role)
            .policy_name(INLINE_POLICY_NAME)
            .send()
            .await,
    );
    let change = match got {
        Ok(out) if same_policy(&out.policy_document, policy) => Change::Unchanged,
        Ok(_) => Change::Updated,
        Err(e) if is_no_such_entity(&e) => Change::Created,
        Err(e) => return Err(e),
    };
    if change != Change::Unchanged {
        aws.track(
            "iam",
            "PutRolePolicy",
            role,
            iam.put_role_policy()
                .role_name(role)
                .policy_name(INLINE_POLICY_NAME)
                .policy_document(policy.to_string())
                .send()
                .await,
        )?;
    }
    let listed = aws.track(
        "iam",
        "ListRolePolicies",
        role,
        iam.list_role_policies().role_name(role).send().await,
    )?;
    let mut change = change;
    for extra in listed
        .policy_names
        .iter()
        .filter(|n| *n != INLINE_POLICY_NAME)
    {
        aws.track(
            "iam",
            "DeleteRolePolicy",
            role,
            iam.delete_role_policy()
                .role_name(role)
                .policy_name(extra)
                .send()
                .await,
        )?;
        if change == Change::Unchanged {
            change = Change::Updated;
        }
    }
    Ok(change)
}

/// Deletes the inline policies, detaches managed ones and deletes the role, if it is ours.
/// A missing role is not an error.
pub async fn delete_role(aws: &Aws, partition: Partition, role: &str, owner: &str) -> Result<bool> {
    let iam = aws.iam(partition);
    let tags = match aws.track(
        "iam",
        "ListRoleTags",
        role,
        iam.list_role_tags().role_name(role).send().await,
    ) {
        Ok(t) => t.tags,
        Err(e) if is_no_such_entity(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    if !tags.iter().any(|t| t.key == OWNER_TAG && t.value == owner) {
        return Ok(false);
    }
    let listed = aws.track(
        "iam",
        "ListRolePolicies",
        role,
        iam.list_role_policies().role_name(role).send().await,
    )?;
    for name in &listed.policy_names {
        aws.track(
            "iam",
            "DeleteRolePolicy",
            role,
            iam.delete_role_policy()
                .role_name(role)
                .policy_name(name)
                .send()
                .await,
        )?;
    }
    let attached = aws.track(
        "iam",
        "ListAttachedRolePolicies",
        role,
        iam.list_attached_role_policies()
            .role_name(role)
            .send()
            .await,
    )?;
    for p in attached.attached_policies() {
        if let Some(arn) = p.policy_arn() {
            aws.track(
                "iam",
                "DetachRolePolicy",
                role,
                iam.detach_role_policy()
                    .role_name(role)
                    .policy_arn(arn)
                    .send()
                    .await,
            )?;
        }
    }
    match aws.track(
        "iam",
        "DeleteRole",
        role,
        iam.delete_role().role_name(role).send().await,
    ) {
        Ok(_) => Ok(true),
        Err(e) if is_no_such_entity(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::moto::Moto;

    #[test]
    fn trust_policy_pins_issuer_subject_and_audience() {
        let got = trust_policy(
            Partition::Aws,
            "123456789012",
            "https://oidc.eks.eu-west-3.amazonaws.com/id/ABCDEF/",
            "monitoring",
            "mimir",
        );
        let want = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-3.amazonaws.com/id/ABCDEF"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {"StringEquals": {
                    "oidc.eks.eu-west-3.amazonaws.com/id/ABCDEF:sub": "system:serviceaccount:monitoring:mimir",
                    "oidc.eks.eu-west-3.amazonaws.com/id/ABCDEF:aud": "sts.amazonaws.com"
                }}
            }]
        });
        assert_eq!(got, want);
        let cn = trust_policy(
            Partition::AwsCn,
            "1",
            "oidc.eks.cn-north-1.amazonaws.com.cn/id/X",
            "n",
            "s",
        );
        assert_eq!(
            cn["Statement"][0]["Principal"]["Federated"],
            "arn:aws-cn:iam::1:oidc-provider/oidc.eks.cn-north-1.amazonaws.com.cn/id/X"
        );
    }

    #[test]
    fn inline_policy_grants_exactly_six_actions_on_bucket_and_objects() {
        let p = inline_policy(Partition::Aws, "acme-metrics");
        let statements = p["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1);
        let s = &statements[0];
        assert_eq!(s["Effect"], "Allow");
        let mut actions: Vec<&str> = s["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        actions.sort();
        assert_eq!(
            actions,
            [
                "s3:AbortMultipartUpload",
                "s3:DeleteObject",
                "s3:GetObject",
                "s3:ListBucket",
                "s3:ListMultipartUploadParts",
                "s3:PutObject"
            ]
        );
        assert_eq!(
            s["Resource"],
            json!(["arn:aws:s3:::acme-metrics", "arn:aws:s3:::acme-metrics/*"])
        );
        assert_eq!(
            s.as_object().unwrap().len(),
            3,
            "no Condition, no NotAction: {s}"
        );
        let gov = inline_policy(Partition::AwsUsGov, "b");
        assert_eq!(gov["Statement"][0]["Resource"][0], "arn:aws-us-gov:s3:::b");
    }

    #[test]
    fn url_encoded_documents_compare_as_json() {
        let desired = inline_policy(Partition::Aws, "b");
        let encoded =
            urlencoding::encode(&serde_json::to_string_pretty(&desired).unwrap()).into_owned();
        assert!(same_policy(&encoded, &desired));
        let mut reordered = desired.clone();
        reordered["Statement"][0]["Action"] = json!(S3_ACTIONS.iter().rev().collect::<Vec<_>>());
        assert!(same_policy(
            &urlencoding::encode(&reordered.to_string()),
            &desired
        ));
        let mut widened = desired.clone();
        widened["Statement"][0]["Resource"] = json!("*");
        assert!(!same_policy(
            &urlencoding::encode(&widened.to_string()),
            &desired
        ));
        assert!(!same_policy("not json", &desired));
    }

    #[tokio::test]
    async fn role_and_inline_policy_are_created_then_drift_is_corrected() {
        let moto = Moto::start();
        let aws = moto.aws().await;
        let trust = trust_policy(
            Partition::Aws,
            "123456789012",
            "oidc.example.com/id/A",
            "ns",
            "sa",
        );
        let policy = inline_policy(Partition::Aws, "b1");
        let (arn, c) = ensure_role(&aws, Partition::Aws, "r1", &trust, "ns/c")
            .await
            .unwrap();
        assert_eq!(arn, "arn:aws:iam::123456789012:role/r1");
        assert_eq!(c, Change::Created);
        assert_eq!(
            ensure_inline_policy(&aws, Partition::Aws, "r1", &policy)
                .await
                .unwrap(),
            Change::Created
        );
        assert_eq!(
            ensure_role(&aws, Partition::Aws, "r1", &trust, "ns/c")
                .await
                .unwrap()
                .1,
            Change::Unchanged
        );
        assert_eq!(
            ensure_inline_policy(&aws, Partition::Aws, "r1", &policy)
                .await
                .unwrap(),
            Change::Unchanged
        );

        // Out-of-band edits: a wider trust policy, a wider inline policy, an extra inline policy.
        let iam = aws.iam(Partition::Aws);
        let open = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
        iam.update_assume_role_policy()
            .role_name("r1")
            .policy_document(open.to_string())
            .send()
            .await
            .unwrap();
        let wide = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]});
        iam.put_role_policy()
            .role_name("r1")
            .policy_name(INLINE_POLICY_NAME)
            .policy_document(wide.to_string())
            .send()
            .await
            .unwrap();
        iam.put_role_policy()
            .role_name("r1")
            .policy_name("extra")
            .policy_document(wide.to_string())
            .send()
            .await
            .unwrap();

        assert_eq!(
            ensure_role(&aws, Partition::Aws, "r1", &trust, "ns/c")
                .await
                .unwrap()
                .1,
            Change::Updated
        );
        assert_eq!(
            ensure_inline_policy(&aws, Partition::Aws, "r1", &policy)
                .await
                .unwrap(),
            Change::Updated
        );
        let role = iam
            .get_role()
            .role_name("r1")
            .send()
            .await
            .unwrap()
            .role
            .unwrap();
        assert!(same_policy(
            role.assume_role_policy_document.as_deref().unwrap(),
            &trust
        ));
        let names = iam
            .list_role_policies()
            .role_name("r1")
            .send()
            .await
            .unwrap()
            .policy_names;
        assert_eq!(names, [INLINE_POLICY_NAME]);
        let doc = iam
            .get_role_policy()
            .role_name("r1")
            .policy_name(INLINE_POLICY_NAME)
            .send()
            .await
            .unwrap();
        assert!(same_policy(&doc.policy_document, &policy));

        assert!(
            delete_role(&aws, Partition::Aws, "r1", "ns/c")
                .await
                .unwrap()
        );
        assert!(
            !delete_role(&aws, Partition::Aws, "r1", "ns/c")
                .await
                .unwrap(),
            "already gone"
        );
    }

    #[tokio::test]
    async fn foreign_role_is_refused_and_never_deleted() {
        let moto = Moto::start();
        let aws = moto.aws().await;
        let iam = aws.iam(Partition::Aws);
        iam.create_role()
            .role_name("theirs")
            .assume_role_policy_document("{}")
            .send()
            .await
            .unwrap();
        let trust = trust_policy(
            Partition::Aws,
            "123456789012",
            "oidc.example.com/id/A",
            "ns",
            "sa",
        );
        let err = ensure_role(&aws, Partition::Aws, "theirs", &trust, "ns/c")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RoleNotOurs { .. }), "{err}");
        assert!(err.is_terminal());
        assert!(
            !delete_role(&aws, Partition::Aws, "theirs", "ns/c")
                .await
                .unwrap()
        );
        assert!(iam.get_role().role_name("theirs").send().await.is_ok());
    }
}
