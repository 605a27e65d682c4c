//! S3: create or adopt the bucket (only when tagged as ours or adoption is asked), keep public
//! access blocked, default encryption on and ownership owner-enforced, and delete it with its
//! objects when the deletion policy asks and the operator created it.

use std::collections::BTreeMap;

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CreateBucketConfiguration, Delete, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
    ObjectIdentifier, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
};

use super::iam::Change;
use super::{Aws, CREATED_TAG, MANAGED_BY_TAG, OWNER_TAG, error_code};
use crate::crd::BucketMode;
use crate::{Error, Result};

fn build_err(what: &'static str) -> impl Fn(aws_sdk_s3::error::BuildError) -> Error {
    move |e| Error::BuildRequest {
        what,
        message: e.to_string(),
    }
}

/// The bucket's tags after we own it: the existing ones plus ours (`created` only when the
/// operator made the bucket, so `Delete` never removes an adopted bucket).
pub fn desired_tags(
    existing: &BTreeMap<String, String>,
    owner: &str,
    created: bool,
) -> BTreeMap<String, String> {
    let mut tags = existing.clone();
    tags.insert(OWNER_TAG.to_string(), owner.to_string());
    tags.insert(MANAGED_BY_TAG.0.to_string(), MANAGED_BY_TAG.1.to_string());
    if created {
        tags.insert(CREATED_TAG.to_string(), "true".to_string());
    }
    tags
}

/// The public access block: everything blocked.
pub fn public_access_block() -> PublicAccessBlockConfiguration {
    PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build()
}

/// How a bucket stands relative to this cluster.
enum Existing {
    Missing,
    /// Exists and readable by us, with these tags.
    Ours(BTreeMap<String, String>),
}

async fn bucket_state(aws: &Aws, s3: &aws_sdk_s3::Client, bucket: &str) -> Result<Existing> {
    match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => aws.metrics().aws_request("s3", "HeadBucket", "OK"),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = match status {
                Some(404) => "NotFound",
                Some(403) => "Forbidden",
                _ => "Unknown",
            };
            aws.metrics().aws_request("s3", "HeadBucket", code);
            return match status {
                Some(404) => Ok(Existing::Missing),
                Some(403) => Err(Error::BucketTakenByOtherAccount {
                    bucket: bucket.to_string(),
                }),
                _ => Err(super::aws_error("s3", "HeadBucket", bucket, &e)),
            };
        }
    }
    Ok(Existing::Ours(bucket_tags(aws, s3, bucket).await?))
}

/// The bucket's tags (empty when it has none).
pub async fn bucket_tags(
    aws: &Aws,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
) -> Result<BTreeMap<String, String>> {
    match aws.track(
        "s3",
        "GetBucketTagging",
        bucket,
        s3.get_bucket_tagging().bucket(bucket).send().await,
    ) {
        Ok(out) => Ok(out.tag_set.into_iter().map(|t| (t.key, t.value)).collect()),
        Err(e) if error_code(&e) == Some("NoSuchTagSet") => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

async fn put_tags(
    aws: &Aws,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    let mut tagging = Tagging::builder();
    for (k, v) in tags {
        tagging = tagging.tag_set(
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(build_err("Tag"))?,
        );
    }
    let tagging = tagging.build().map_err(build_err("Tagging"))?;
    aws.track(
        "s3",
        "PutBucketTagging",
        bucket,
        s3.put_bucket_tagging()
            .bucket(bucket)
            .tagging(tagging)
            .send()
            .await,
    )?;
    Ok(())
}

/// Creates the bucket or checks we may use it, then enforces its settings. Returns what changed.
pub async fn ensure_bucket(
    aws: &Aws,
    region: &str,
    bucket: &str,
    mode: BucketMode,
    owner: &str,
) -> Result<Change> {
    let s3 = aws.s3(region);
    let mut change = Change::Unchanged;
    match bucket_state(aws, &s3, bucket).await? {
        Existing::Missing => {
            let mut req = s3.create_bucket().bucket(bucket);
            // us-east-1 is the default location and refuses an explicit LocationConstraint.
            if region != "us-east-1" {
                req = req.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region))
                        .build(),
                );
            }
            match aws.track("s3", "CreateBucket", bucket, req.send().await) {
                Ok(_) => {}
                Err(e) if error_code(&e) == Some("BucketAlreadyExists") => {
                    return Err(Error::BucketTakenByOtherAccount {
                        bucket: bucket.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
            put_tags(
                aws,
                &s3,
                bucket,
                &desired_tags(&BTreeMap::new(), owner, true),
            )
            .await?;
            change = Change::Created;
        }
        Existing::Ours(tags) => match tags.get(OWNER_TAG) {
            Some(o) if o == owner => {
                let created = tags.get(CREATED_TAG).is_some_and(|v| v == "true");
                let want = desired_tags(&tags, owner, created);
                if want != tags {
                    put_tags(aws, &s3, bucket, &want).await?;
                    change = Change::Updated;
                }
            }
            // Tagged for another cluster, or untagged without adoption asked: not ours to touch.
            Some(_) => {
                return Err(Error::BucketNotOurs {
                    bucket: bucket.to_string(),
                });
            }
            None if mode == BucketMode::Adopt => {
                put_tags(aws, &s3, bucket, &desired_tags(&tags, owner, false)).await?;
                change = Change::Updated;
            }
            None => {
                return Err(Error::BucketNotOurs {
                    bucket: bucket.to_string(),
                });
            }
        },
    }
    if enforce_settings(aws, &s3, bucket).await? && change == Change::Unchanged {
        change = Change::Updated;
    }
    Ok(change)
}

/// ID of the lifecycle rule the operator keeps on the bucket.
pub const LIFECYCLE_RULE_ID: &str = "rimir-abort-incomplete-multipart-uploads";

/// Days after which S3 aborts a multipart upload that was never completed.
pub const ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS: i32 = 1;

/// The lifecycle rule aborting incomplete multipart uploads in the whole bucket: an ingester or
/// compactor killed during an upload leaves its parts behind, and the pods' policy cannot list
/// multipart uploads, so S3 has to clean them. It expires no object.
pub fn abort_incomplete_uploads_rule() -> Result<LifecycleRule> {
    LifecycleRule::builder()
        .id(LIFECYCLE_RULE_ID)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS)
                .build(),
        )
        .build()
        .map_err(build_err("LifecycleRule"))
}

/// Whether `r` is the operator's rule as [`abort_incomplete_uploads_rule`] builds it (compared
/// by what it does, not by the representation S3 returns).
fn is_abort_rule(r: &LifecycleRule) -> bool {
    r.id() == Some(LIFECYCLE_RULE_ID)
        && *r.status() == ExpirationStatus::Enabled
        && r.filter()
            .is_none_or(|f| f.prefix().unwrap_or_default().is_empty() && f.tag().is_none())
        && r.expiration().is_none()
        && r.abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation())
            == Some(ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS)
}

/// The answer of a `Get…` call for a bucket setting, `None` when S3 answers with `missing`
/// (the setting was never put or was deleted).
fn setting<T>(answer: Result<T>, missing: &str) -> Result<Option<T>> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(e) if error_code(&e) == Some(missing) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Public access block, SSE-S3 default encryption, BucketOwnerEnforced, the lifecycle rule
/// aborting incomplete uploads (other lifecycle rules of an adopted bucket are kept); returns
/// true when something had drifted and was corrected.
async fn enforce_settings(aws: &Aws, s3: &aws_sdk_s3::Client, bucket: &str) -> Result<bool> {
    let mut corrected = false;
    let want_pab = public_access_block();
    let pab = setting(
        aws.track(
            "s3",
            "GetPublicAccessBlock",
            bucket,
            s3.get_public_access_block().bucket(bucket).send().await,
        ),
        "NoSuchPublicAccessBlockConfiguration",
    )?
    .and_then(|out| out.public_access_block_configuration);
    if pab.as_ref() != Some(&want_pab) {
        aws.track(
            "s3",
            "PutPublicAccessBlock",
            bucket,
            s3.put_public_access_block()
                .bucket(bucket)
                .public_access_block_configuration(want_pab)
                .send()
                .await,
        )?;
        corrected = true;
    }

    let enc = setting(
        aws.track(
            "s3",
            "GetBucketEncryption",
            bucket,
            s3.get_bucket_encryption().bucket(bucket).send().await,
        ),
        "ServerSideEncryptionConfigurationNotFoundError",
    )?
    .and_then(|out| out.server_side_encryption_configuration);
    let encrypted = enc.as_ref().is_some_and(|c| {
        c.rules()
            .iter()
            .any(|r| r.apply_server_side_encryption_by_default().is_some())
    });
    if !encrypted {
        let rule = ServerSideEncryptionRule::builder()
            .apply_server_side_encryption_by_default(
                ServerSideEncryptionByDefault::builder()
                    .sse_algorithm(ServerSideEncryption::Aes256)
                    .build()
                    .map_err(build_err("ServerSideEncryptionByDefault"))?,
            )
            .build();
        let conf = ServerSideEncryptionConfiguration::builder()
            .rules(rule)
            .build()
            .map_err(build_err("ServerSideEncryptionConfiguration"))?;
        aws.track(
            "s3",
            "PutBucketEncryption",
            bucket,
            s3.put_bucket_encryption()
                .bucket(bucket)
                .server_side_encryption_configuration(conf)
                .send()
                .await,
        )?;
        corrected = true;
    }

    let owner = setting(
        aws.track(
            "s3",
            "GetBucketOwnershipControls",
            bucket,
            s3.get_bucket_ownership_controls()
                .bucket(bucket)
                .send()
                .await,
        ),
        "OwnershipControlsNotFoundError",
    )?
    .and_then(|out| out.ownership_controls);
    let enforced = owner.as_ref().is_some_and(|o| {
        o.rules()
            .iter()
            .any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)
    });
    if !enforced {
        let controls = OwnershipControls::builder()
            .rules(
                OwnershipControlsRule::builder()
                    .object_ownership(ObjectOwnership::BucketOwnerEnforced)
                    .build()
                    .map_err(build_err("OwnershipControlsRule"))?,
            )
            .build()
            .map_err(build_err("OwnershipControls"))?;
        aws.track(
            "s3",
            "PutBucketOwnershipControls",
            bucket,
            s3.put_bucket_ownership_controls()
                .bucket(bucket)
                .ownership_controls(controls)
                .send()
                .await,
        )?;
        corrected = true;
    }

    let rules = setting(
        aws.track(
            "s3",
            "GetBucketLifecycleConfiguration",
            bucket,
            s3.get_bucket_lifecycle_configuration()
                .bucket(bucket)
                .send()
                .await,
        ),
        "NoSuchLifecycleConfiguration",
    )?
    .and_then(|out| out.rules)
    .unwrap_or_default();
    if !rules.iter().any(is_abort_rule) {
        let mut keep: Vec<LifecycleRule> = rules
            .into_iter()
            .filter(|r| r.id() != Some(LIFECYCLE_RULE_ID))
            .collect();
        keep.push(abort_incomplete_uploads_rule()?);
        let conf = BucketLifecycleConfiguration::builder()
            .set_rules(Some(keep))
            .build()
            .map_err(build_err("BucketLifecycleConfiguration"))?;
        aws.track(
            "s3",
            "PutBucketLifecycleConfiguration",
            bucket,
            s3.put_bucket_lifecycle_configuration()
                .bucket(bucket)
                .lifecycle_configuration(conf)
                .send()
                .await,
        )?;
        corrected = true;
    }
    Ok(corrected)
}

/// Deletes every object version and the bucket, if the operator created it for this cluster.
/// Returns false (and deletes nothing) for a missing, adopted or foreign bucket.
pub async fn delete_bucket(aws: &Aws, region: &str, bucket: &str, owner: &str) -> Result<bool> {
    let s3 = aws.s3(region);
    let tags = match bucket_state(aws, &s3, bucket).await {
        Ok(Existing::Ours(tags)) => tags,
        Ok(Existing::Missing) | Err(Error::BucketTakenByOtherAccount { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let ours = tags.get(OWNER_TAG).is_some_and(|o| o == owner)
        && tags.get(CREATED_TAG).is_some_and(|v| v == "true");
    if !ours {
        return Ok(false);
    }
    loop {
        let listed = aws.track(
            "s3",
            "ListObjectVersions",
            bucket,
            s3.list_object_versions().bucket(bucket).send().await,
        )?;
        let mut ids = Vec::new();
        for v in listed.versions() {
            if let Some(key) = v.key() {
                ids.push(
                    ObjectIdentifier::builder()
                        .key(key)
                        .set_version_id(v.version_id().map(str::to_string))
                        .build(),
                );
            }
        }
        for m in listed.delete_markers() {
            if let Some(key) = m.key() {
                ids.push(
                    ObjectIdentifier::builder()
                        .key(key)
                        .set_version_id(m.version_id().map(str::to_string))
                        .build(),
                );
            }
        }
        if ids.is_empty() {
            break;
        }
        let ids: Vec<ObjectIdentifier> = ids
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(build_err("ObjectIdentifier"))?;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(build_err("Delete"))?;
        aws.track(
            "s3",
            "DeleteObjects",
            bucket,
            s3.delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await,
        )?;
    }
    aws.track(
        "s3",
        "DeleteBucket",
        bucket,
        s3.delete_bucket().bucket(bucket).send().await,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::moto::Moto;
    use aws_sdk_s3::primitives::ByteStream;

    #[test]
    fn adopted_buckets_keep_user_tags_and_are_not_marked_created() {
        let existing = BTreeMap::from([("team".to_string(), "obs".to_string())]);
        let t = desired_tags(&existing, "ns/c", false);
        assert_eq!(t["team"], "obs");
        assert_eq!(t[OWNER_TAG], "ns/c");
        assert!(!t.contains_key(CREATED_TAG));
        assert_eq!(
            desired_tags(&BTreeMap::new(), "ns/c", true)[CREATED_TAG],
            "true"
        );
    }

    #[tokio::test]
    async fn bucket_is_created_locked_down_and_drift_is_corrected() {
        let moto = Moto::start();
        let aws = moto.aws().await;
        for (region, bucket) in [("eu-west-3", "acme-metrics"), ("us-east-1", "acme-east")] {
            assert_eq!(
                ensure_bucket(&aws, region, bucket, BucketMode::Create, "ns/c")
                    .await
                    .unwrap(),
                Change::Created
            );
            let s3 = aws.s3(region);
            let loc = s3
                .get_bucket_location()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let want = if region == "us-east-1" {
                None
            } else {
                Some(region)
            };
            assert_eq!(
                loc.location_constraint()
                    .map(|l| l.as_str())
                    .filter(|l| !l.is_empty()),
                want
            );
            let pab = s3
                .get_public_access_block()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            assert_eq!(
                pab.public_access_block_configuration,
                Some(public_access_block())
            );
            let tags = bucket_tags(&aws, &s3, bucket).await.unwrap();
            assert_eq!(tags[OWNER_TAG], "ns/c");
            assert_eq!(tags[CREATED_TAG], "true");
            let enc = s3
                .get_bucket_encryption()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            assert!(enc.server_side_encryption_configuration.is_some());
            let own = s3
                .get_bucket_ownership_controls()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            assert_eq!(
                own.ownership_controls.unwrap().rules()[0].object_ownership(),
                &ObjectOwnership::BucketOwnerEnforced
            );
            let lc = s3
                .get_bucket_lifecycle_configuration()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            assert_eq!(lc.rules().len(), 1);
            assert!(is_abort_rule(&lc.rules()[0]), "{:?}", lc.rules());
        }
        assert_eq!(
            ensure_bucket(
                &aws,
                "eu-west-3",
                "acme-metrics",
                BucketMode::Create,
                "ns/c"
            )
            .await
            .unwrap(),
            Change::Unchanged
        );
        // Someone removes the public access block and the lifecycle rules: the next resync
        // restores them.
        let s3 = aws.s3("eu-west-3");
        s3.delete_public_access_block()
            .bucket("acme-metrics")
            .send()
            .await
            .unwrap();
        s3.delete_bucket_lifecycle()
            .bucket("acme-metrics")
            .send()
            .await
            .unwrap();
        assert_eq!(
            ensure_bucket(
                &aws,
                "eu-west-3",
                "acme-metrics",
                BucketMode::Create,
                "ns/c"
            )
            .await
            .unwrap(),
            Change::Updated
        );
        let pab = s3
            .get_public_access_block()
            .bucket("acme-metrics")
            .send()
            .await
            .unwrap();
        assert_eq!(
            pab.public_access_block_configuration,
            Some(public_access_block())
        );
        let lc = s3
            .get_bucket_lifecycle_configuration()
            .bucket("acme-metrics")
            .send()
            .await
            .unwrap();
        assert!(lc.rules().iter().any(is_abort_rule), "{:?}", lc.rules());
    }

    #[tokio::test]
    async fn untagged_bucket_is_refused_unless_adopted_and_adopted_is_never_deleted() {
        let moto = Moto::start();
        let aws = moto.aws().await;
        let s3 = aws.s3("eu-west-3");
        s3.create_bucket()
            .bucket("legacy")
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::EuWest3)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let err = ensure_bucket(&aws, "eu-west-3", "legacy", BucketMode::Create, "ns/c")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::BucketNotOurs { .. }) && err.is_terminal(),
            "{err}"
        );
        assert!(err.to_string().contains("Adopt"), "{err}");
        // The user's own lifecycle rule survives adoption beside the operator's.
        let theirs = LifecycleRule::builder()
            .id("expire-tmp")
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("tmp/").build())
            .expiration(
                aws_sdk_s3::types::LifecycleExpiration::builder()
                    .days(7)
                    .build(),
            )
            .build()
            .unwrap();
        s3.put_bucket_lifecycle_configuration()
            .bucket("legacy")
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .rules(theirs)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            ensure_bucket(&aws, "eu-west-3", "legacy", BucketMode::Adopt, "ns/c")
                .await
                .unwrap(),
            Change::Updated
        );
        let lc = s3
            .get_bucket_lifecycle_configuration()
            .bucket("legacy")
            .send()
            .await
            .unwrap();
        let ids: Vec<_> = lc.rules().iter().filter_map(|r| r.id()).collect();
        assert_eq!(ids, ["expire-tmp", LIFECYCLE_RULE_ID]);
        // Another cluster cannot adopt it in turn.
        let err = ensure_bucket(&aws, "eu-west-3", "legacy", BucketMode::Adopt, "ns/other")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BucketNotOurs { .. }), "{err}");
        assert!(
            !delete_bucket(&aws, "eu-west-3", "legacy", "ns/c")
                .await
                .unwrap()
        );
        assert!(s3.head_bucket().bucket("legacy").send().await.is_ok());
    }

    #[tokio::test]
    async fn delete_removes_created_bucket_with_its_objects() {
        let moto = Moto::start();
        let aws = moto.aws().await;
        ensure_bucket(&aws, "eu-west-3", "doomed", BucketMode::Create, "ns/c")
            .await
            .unwrap();
        let s3 = aws.s3("eu-west-3");
        for key in [
            "anonymous/01/meta.json",
            "anonymous/01/index",
            "anonymous/bucket-index.json.gz",
        ] {
            s3.put_object()
                .bucket("doomed")
                .key(key)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
                .unwrap();
        }
        assert!(
            !delete_bucket(&aws, "eu-west-3", "doomed", "ns/other")
                .await
                .unwrap(),
            "not the owner"
        );
        assert!(
            delete_bucket(&aws, "eu-west-3", "doomed", "ns/c")
                .await
                .unwrap()
        );
        assert!(s3.head_bucket().bucket("doomed").send().await.is_err());
        assert!(
            !delete_bucket(&aws, "eu-west-3", "doomed", "ns/c")
                .await
                .unwrap(),
            "already gone"
        );
    }

    #[tokio::test]
    async fn bucket_owned_by_another_account_is_terminal_and_says_so() {
        let moto = Moto::start_with_env(&[("MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS", "false")]);
        let auth = "AWS4-HMAC-SHA256 Credential=other/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        let status = moto.raw(
            "PUT",
            "/taken-name",
            &[
                ("Authorization", auth),
                ("x-moto-account-id", "111111111111"),
            ],
            "",
        );
        assert_eq!(status, 200, "bucket created in account 111111111111");
        let aws = moto.aws().await;
        let err = ensure_bucket(&aws, "us-east-1", "taken-name", BucketMode::Adopt, "ns/c")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::BucketTakenByOtherAccount { .. }) && err.is_terminal(),
            "{err}"
        );
        assert!(
            err.to_string().contains("owned by another AWS account"),
            "{err}"
        );
        assert!(
            !delete_bucket(&aws, "us-east-1", "taken-name", "ns/c")
                .await
                .unwrap()
        );
    }
}
