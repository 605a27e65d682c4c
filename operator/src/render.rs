//! `rimir-operator render -f FILE`: everything a MimirCluster would create, offline — the AWS
//! documents (bucket settings, trust and inline policies) and every Kubernetes child.

use serde::Serialize;
use serde_json::{Value, json};

use crate::aws::iam::{INLINE_POLICY_NAME, inline_policy, trust_policy};
use crate::aws::s3::{
    ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS, LIFECYCLE_RULE_ID, desired_tags, public_access_block,
};
use crate::aws::{Partition, bucket_arn, role_arn};
use crate::crd::{MimirCluster, validate};
use crate::workloads::Names;
use crate::workloads::objects::desired_children;
use crate::{Error, Result};

/// Placeholder for the account id when the spec does not give one (no STS call offline).
pub const ACCOUNT_PLACEHOLDER: &str = "ACCOUNT_ID";

/// The AWS documents as YAML-friendly values, in reconcile order.
pub fn aws_documents(mc: &MimirCluster) -> Vec<Value> {
    let names = Names::of(mc);
    let spec = &mc.spec;
    let partition = Partition::from_region(&spec.aws.region);
    let account = spec
        .aws
        .account_id
        .clone()
        .unwrap_or_else(|| ACCOUNT_PLACEHOLDER.to_string());
    let bucket = &spec.storage.bucket_name;
    let role = spec
        .aws
        .role_name
        .clone()
        .unwrap_or_else(|| names.default_role_name());
    let sa = spec.service_account_name(&names.cluster);
    let pab = public_access_block();
    vec![
        json!({
            "aws": "s3:Bucket",
            "name": bucket,
            "arn": bucket_arn(partition, bucket),
            "region": spec.aws.region,
            "mode": spec.storage.mode,
            "locationConstraint": if spec.aws.region == "us-east-1" { Value::Null } else { json!(spec.aws.region) },
            "publicAccessBlock": {
                "BlockPublicAcls": pab.block_public_acls(),
                "IgnorePublicAcls": pab.ignore_public_acls(),
                "BlockPublicPolicy": pab.block_public_policy(),
                "RestrictPublicBuckets": pab.restrict_public_buckets(),
            },
            "defaultEncryption": "AES256",
            "objectOwnership": "BucketOwnerEnforced",
            "lifecycleRules": [{
                "ID": LIFECYCLE_RULE_ID,
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS},
            }],
            "tags": desired_tags(&Default::default(), &names.owner_tag(), true),
        }),
        json!({
            "aws": "iam:Role",
            "name": role,
            "arn": role_arn(partition, &account, &role),
            "assumeRolePolicyDocument": trust_policy(partition, &account, &spec.aws.oidc_issuer, &names.namespace, &sa),
        }),
        json!({
            "aws": "iam:RolePolicy",
            "role": role,
            "name": INLINE_POLICY_NAME,
            "policyDocument": inline_policy(partition, bucket),
        }),
    ]
}

fn to_yaml<T: Serialize>(v: &T, what: &str) -> Result<String> {
    let value = serde_json::to_value(v).map_err(|source| Error::Encode {
        what: what.to_string(),
        source,
    })?;
    // A serde_json::Value always has a YAML form.
    Ok(serde_yaml::to_string(&value).unwrap_or_default())
}

/// Renders a MimirCluster manifest into a multi-document YAML stream.
pub fn render(manifest: &str) -> Result<String> {
    let mut mc: MimirCluster = serde_yaml::from_str(manifest)
        .map_err(|e| Error::InvalidSpec(format!("parsing the MimirCluster: {e}")))?;
    if mc.metadata.namespace.is_none() {
        mc.metadata.namespace = Some("default".into());
    }
    validate(&mc.spec)?;
    let names = Names::of(&mc);
    let partition = Partition::from_region(&mc.spec.aws.region);
    let account = mc
        .spec
        .aws
        .account_id
        .clone()
        .unwrap_or_else(|| ACCOUNT_PLACEHOLDER.to_string());
    let role = mc
        .spec
        .aws
        .role_name
        .clone()
        .unwrap_or_else(|| names.default_role_name());
    let arn = role_arn(partition, &account, &role);
    let children = desired_children(&mc, &arn);

    let mut out = String::new();
    out.push_str(&format!(
        "# rimir-operator render of MimirCluster {}/{} (offline; ownerReferences are added in-cluster)\n",
        names.namespace, names.cluster
    ));
    if mc.spec.aws.account_id.is_none() {
        out.push_str(&format!(
            "# aws.accountId not set: {ACCOUNT_PLACEHOLDER} stands for the STS caller's account\n"
        ));
    }
    let mut docs: Vec<(String, String)> = Vec::new();
    for d in aws_documents(&mc) {
        docs.push((
            format!("AWS {}", d["aws"].as_str().unwrap_or_default()),
            to_yaml(&d, "AWS document")?,
        ));
    }
    docs.push((
        "ServiceAccount".into(),
        to_yaml(&children.service_account, "ServiceAccount")?,
    ));
    docs.push((
        "ConfigMap".into(),
        to_yaml(&children.config_map, "ConfigMap")?,
    ));
    for s in &children.services {
        docs.push(("Service".into(), to_yaml(s, "Service")?));
    }
    for s in &children.statefulsets {
        docs.push(("StatefulSet".into(), to_yaml(s, "StatefulSet")?));
    }
    docs.push((
        "PodDisruptionBudget".into(),
        to_yaml(&children.ingester_pdb, "PodDisruptionBudget")?,
    ));
    for (title, yaml) in docs {
        out.push_str(&format!("---\n# {title}\n{yaml}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_text() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/samples/mimircluster.yaml"
        ))
        .unwrap()
    }

    #[test]
    fn render_prints_aws_documents_and_every_child() {
        let out = render(&sample_text()).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde_json::to_value(Value::deserialize(d).unwrap()).unwrap())
            .collect();
        let kinds: Vec<String> = docs
            .iter()
            .map(|d| {
                d["kind"]
                    .as_str()
                    .or(d["aws"].as_str())
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "s3:Bucket",
                "iam:Role",
                "iam:RolePolicy",
                "ServiceAccount",
                "ConfigMap",
                "Service",
                "Service",
                "Service",
                "Service",
                "Service",
                "Service",
                "StatefulSet",
                "StatefulSet",
                "StatefulSet",
                "StatefulSet",
                "PodDisruptionBudget"
            ]
        );
        assert_eq!(docs[1]["arn"], "arn:aws:iam::123456789012:role/mimir_role");
        assert_eq!(
            docs[0]["lifecycleRules"][0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
            1
        );
        assert_eq!(
            docs[1]["assumeRolePolicyDocument"]["Statement"][0]["Condition"]["StringEquals"]["oidc.eks.eu-west-3.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE:sub"],
            "system:serviceaccount:monitoring:mimir"
        );
        assert_eq!(
            docs[3]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
            docs[1]["arn"]
        );
        assert_eq!(
            docs[2]["policyDocument"]["Statement"][0]["Resource"][0],
            "arn:aws:s3:::mimir-bucket-example"
        );
    }

    #[test]
    fn render_refuses_an_invalid_spec_naming_the_field() {
        let bad = sample_text().replace("mimir-bucket-example", "Bad_Bucket");
        let err = render(&bad).unwrap_err();
        assert!(err.to_string().contains("spec.storage.bucketName"), "{err}");
    }

    use serde::Deserialize;
}
