//! `rimir-operator`: reconciles `MimirCluster` objects into an S3 bucket, an IRSA role with its
//! inline policy, and the rimir workloads on Kubernetes.
//!
//! Start with [`crd`] (what users write), then [`controller`] (the reconcile loop, in the order
//! of the steps). [`aws`] holds one module per AWS service, [`workloads`] the pure builders of
//! every Kubernetes child object, [`render`] the offline `render` subcommand.

/// Every way a reconcile can fail. Terminal variants (see [`Error::is_terminal`]) are reported in
/// status and not retried until the spec changes; the others back off and retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is invalid (checked before any AWS or Kubernetes write).
    #[error("invalid MimirCluster spec: {0}")]
    InvalidSpec(String),
    /// The bucket name belongs to another AWS account.
    #[error(
        "S3 bucket {bucket} already exists and is owned by another AWS account (BucketAlreadyExists): choose another storage.bucketName"
    )]
    BucketTakenByOtherAccount {
        /// The bucket name.
        bucket: String,
    },
    /// The bucket exists in our account but neither belongs to this cluster nor may be adopted.
    #[error(
        "S3 bucket {bucket} exists in this account but is not tagged as this MimirCluster's: set storage.mode: Adopt to take it over"
    )]
    BucketNotOurs {
        /// The bucket name.
        bucket: String,
    },
    /// The IAM role exists but was not created for this cluster.
    #[error(
        "IAM role {role} exists but is not tagged as this MimirCluster's: choose another aws.roleName"
    )]
    RoleNotOurs {
        /// The role name.
        role: String,
    },
    /// An AWS API call failed.
    #[error("{service} {operation} on {object}: {code}: {message}")]
    Aws {
        /// `s3`, `iam` or `sts`.
        service: &'static str,
        /// API operation, e.g. `PutRolePolicy`.
        operation: &'static str,
        /// Bucket, role or account the call was about.
        object: String,
        /// AWS error code (`NoSuchBucket`, `Throttling`, …) or `Unknown` for transport errors.
        code: String,
        /// Error message from AWS or the transport.
        message: String,
    },
    /// A Kubernetes API call failed.
    #[error("{operation} {object}: {source}")]
    Kube {
        /// What was attempted (`apply`, `patch status`, `delete`).
        operation: &'static str,
        /// `Kind/namespace/name`.
        object: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The finalizer machinery failed (adding/removing the finalizer, or the step inside it).
    #[error("finalizer of {object}: {source}")]
    Finalizer {
        /// `MimirCluster/namespace/name`.
        object: String,
        /// The failure.
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
    /// An AWS request could not be built (a required field missing: a bug, not bad input).
    #[error("building AWS request {what}: {message}")]
    BuildRequest {
        /// The request or type being built.
        what: &'static str,
        /// The builder's complaint.
        message: String,
    },
    /// A document could not be encoded (never expected: our types are plain data).
    #[error("encoding {what}: {source}")]
    Encode {
        /// The document.
        what: String,
        /// The serializer error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Terminal errors need a spec or out-of-band change; retrying would only repeat them.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_)
                | Error::BucketTakenByOtherAccount { .. }
                | Error::BucketNotOurs { .. }
                | Error::RoleNotOurs { .. }
        )
    }

    /// A short, stable name for metrics and Event reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::BucketTakenByOtherAccount { .. } => "BucketAlreadyExists",
            Error::BucketNotOurs { .. } => "BucketNotOurs",
            Error::RoleNotOurs { .. } => "RoleNotOurs",
            Error::Aws { .. } => "AwsError",
            Error::Kube { .. } => "KubeError",
            Error::Finalizer { .. } => "FinalizerError",
            Error::Encode { .. } => "EncodeError",
            Error::BuildRequest { .. } => "BuildRequestError",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub mod aws;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod workloads;
