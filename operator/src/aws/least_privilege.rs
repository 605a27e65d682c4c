//! Proof, against moto with IAM enforcement on, that the generated inline policy is enough for
//! the TSDB's S3 calls on its bucket and nothing more.
//!
//! What moto checks: the SigV4 signature, the assumed role's inline policies against the action
//! and the bucket/object ARN. What it does not: the web-identity token itself and the trust
//! policy's `sub`/`aud` conditions on `AssumeRoleWithWebIdentity` (any token is accepted), so the
//! trust policy is proven by exact-JSON unit tests instead.

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;

use super::iam::{ensure_inline_policy, ensure_role, inline_policy, trust_policy};
use super::moto::Moto;
use super::s3::ensure_bucket;
use super::{Partition, error_code};
use crate::crd::BucketMode;

/// Turns moto's request authentication on from the next request (`/moto-api/reset-auth` takes
/// the number of requests still let through unauthenticated).
fn enable_moto_auth(moto: &Moto) {
    assert_eq!(moto.raw("POST", "/moto-api/reset-auth", &[], "0"), 200);
}

#[tokio::test]
async fn inline_policy_allows_tsdb_calls_on_its_bucket_and_denies_the_rest() {
    let moto = Moto::start();
    let root = moto.aws().await;
    let region = "eu-west-3";
    ensure_bucket(&root, region, "tsdb-blocks", BucketMode::Create, "ns/c")
        .await
        .unwrap();
    ensure_bucket(
        &root,
        region,
        "someone-else",
        BucketMode::Create,
        "ns/other",
    )
    .await
    .unwrap();
    let issuer = "oidc.eks.eu-west-3.amazonaws.com/id/ABC";
    let trust = trust_policy(Partition::Aws, "123456789012", issuer, "ns", "mimir");
    let (role_arn, _) = ensure_role(&root, Partition::Aws, "tsdb", &trust, "ns/c")
        .await
        .unwrap();
    ensure_inline_policy(
        &root,
        Partition::Aws,
        "tsdb",
        &inline_policy(Partition::Aws, "tsdb-blocks"),
    )
    .await
    .unwrap();

    // What the EKS webhook makes the pod do: AssumeRoleWithWebIdentity (unsigned).
    let assumed = root
        .sts(region)
        .assume_role_with_web_identity()
        .role_arn(&role_arn)
        .role_session_name("ingester-0")
        .web_identity_token("projected-sa-token")
        .send()
        .await
        .unwrap();
    let c = assumed.credentials.unwrap();
    let pod = moto
        .aws_with(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            None,
            "irsa",
        ))
        .await;
    enable_moto_auth(&moto);
    let s3 = pod.s3(region);

    // The TSDB's calls on its own bucket: all allowed.
    let key = "anonymous/01HZX/meta.json";
    s3.put_object()
        .bucket("tsdb-blocks")
        .key(key)
        .body(ByteStream::from_static(b"{}"))
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket("tsdb-blocks")
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"{}"
    );
    let listed = s3
        .list_objects_v2()
        .bucket("tsdb-blocks")
        .prefix("anonymous/")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), 1);
    let upload = s3
        .create_multipart_upload()
        .bucket("tsdb-blocks")
        .key("anonymous/big")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    // moto answers ListParts with a `ListPartsResponse` root the SDK refuses to decode; the 200
    // status is what proves the call was authorized.
    let parts = s3
        .list_parts()
        .bucket("tsdb-blocks")
        .key("anonymous/big")
        .upload_id(upload_id)
        .send()
        .await;
    let status = match &parts {
        Ok(_) => 200,
        Err(e) => e.raw_response().map_or(0, |r| r.status().as_u16()),
    };
    assert_eq!(
        status, 200,
        "ListParts (s3:ListMultipartUploadParts) allowed"
    );
    s3.abort_multipart_upload()
        .bucket("tsdb-blocks")
        .key("anonymous/big")
        .upload_id(upload_id)
        .send()
        .await
        .unwrap();
    s3.delete_object()
        .bucket("tsdb-blocks")
        .key(key)
        .send()
        .await
        .unwrap();

    // Anything else: denied.
    let denied = |r: Result<(), crate::Error>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(error_code(&e), Some("AccessDenied"), "{what}: {e}");
    };
    let other_put = s3
        .put_object()
        .bucket("someone-else")
        .key("x")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    denied(
        pod.track("s3", "PutObject", "someone-else", other_put)
            .map(|_| ()),
        "put on another bucket",
    );
    let other_get = s3.get_object().bucket("someone-else").key("x").send().await;
    denied(
        pod.track("s3", "GetObject", "someone-else", other_get)
            .map(|_| ()),
        "get on another bucket",
    );
    let other_list = s3.list_objects_v2().bucket("someone-else").send().await;
    denied(
        pod.track("s3", "ListObjectsV2", "someone-else", other_list)
            .map(|_| ()),
        "list another bucket",
    );
    let drop_bucket = s3.delete_bucket().bucket("tsdb-blocks").send().await;
    denied(
        pod.track("s3", "DeleteBucket", "tsdb-blocks", drop_bucket)
            .map(|_| ()),
        "delete its own bucket",
    );
    let policy = s3.get_bucket_policy().bucket("tsdb-blocks").send().await;
    denied(
        pod.track("s3", "GetBucketPolicy", "tsdb-blocks", policy)
            .map(|_| ()),
        "read bucket policy",
    );
}
