//! AWS: one client setup for every service (SDK default credential chain, optional endpoint
//! override for tests), partitions and ARNs, and error/metrics plumbing shared by
//! [`sts`], [`s3`] and [`iam`].

pub mod iam;
pub mod s3;
pub mod sts;

use std::sync::Arc;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::Error;
use crate::metrics::Metrics;

/// An AWS partition, derived from the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Commercial regions.
    Aws,
    /// China (`cn-*`).
    AwsCn,
    /// GovCloud (`us-gov-*`).
    AwsUsGov,
}

impl Partition {
    /// The partition a region belongs to.
    pub fn from_region(region: &str) -> Partition {
        if region.starts_with("cn-") {
            Partition::AwsCn
        } else if region.starts_with("us-gov-") {
            Partition::AwsUsGov
        } else {
            Partition::Aws
        }
    }
    /// The ARN segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Partition::Aws => "aws",
            Partition::AwsCn => "aws-cn",
            Partition::AwsUsGov => "aws-us-gov",
        }
    }
    /// DNS suffix of the partition's endpoints.
    pub fn dns_suffix(self) -> &'static str {
        match self {
            Partition::AwsCn => "amazonaws.com.cn",
            _ => "amazonaws.com",
        }
    }
    /// The region IAM (a global service) is called in.
    pub fn iam_region(self) -> &'static str {
        match self {
            Partition::Aws => "us-east-1",
            Partition::AwsCn => "cn-north-1",
            Partition::AwsUsGov => "us-gov-west-1",
        }
    }
}

/// `arn:<partition>:s3:::<bucket>`.
pub fn bucket_arn(partition: Partition, bucket: &str) -> String {
    format!("arn:{}:s3:::{bucket}", partition.as_str())
}

/// `arn:<partition>:iam::<account>:role/<name>`.
pub fn role_arn(partition: Partition, account: &str, role: &str) -> String {
    format!("arn:{}:iam::{account}:role/{role}", partition.as_str())
}

/// The regional S3 endpoint host the pods use (the tutorial's `s3.<region>.amazonaws.com`).
pub fn s3_endpoint(region: &str, partition: Partition) -> String {
    format!("s3.{region}.{}", partition.dns_suffix())
}

/// Tag key naming the MimirCluster (`namespace/name`) owning an AWS resource.
pub const OWNER_TAG: &str = "rimir.io/cluster";
/// Tag key set to `true` on buckets the operator created (not adopted): only those are deleted.
pub const CREATED_TAG: &str = "rimir.io/created";
/// Tag marking resources managed by the operator.
pub const MANAGED_BY_TAG: (&str, &str) = ("app.kubernetes.io/managed-by", "rimir-operator");

/// Bounds on every AWS call, so one stuck request cannot hold a reconcile slot forever.
fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .operation_attempt_timeout(std::time::Duration::from_secs(20))
        .operation_timeout(std::time::Duration::from_secs(60))
        .build()
}

/// Shared AWS configuration: credentials from the default chain (IRSA in-cluster, environment or
/// profile elsewhere). Credentials are never logged: only this config holds them.
#[derive(Clone)]
pub struct Aws {
    base: SdkConfig,
    endpoint: Option<String>,
    metrics: Arc<Metrics>,
}

impl Aws {
    /// Loads the default chain; `endpoint` overrides every service's endpoint (moto in tests).
    pub async fn from_env(endpoint: Option<String>, metrics: Arc<Metrics>) -> Aws {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .load()
            .await;
        Aws {
            base,
            endpoint,
            metrics,
        }
    }

    /// Builds from an explicit config (tests).
    pub fn from_config(base: SdkConfig, endpoint: Option<String>, metrics: Arc<Metrics>) -> Aws {
        Aws {
            base,
            endpoint,
            metrics,
        }
    }

    /// S3 client for a region (path-style when an endpoint override is set).
    pub fn s3(&self, region: &str) -> aws_sdk_s3::Client {
        let mut b = aws_sdk_s3::config::Builder::from(&self.base)
            .region(Region::new(region.to_string()))
            .timeout_config(timeouts());
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e).force_path_style(true);
        }
        aws_sdk_s3::Client::from_conf(b.build())
    }

    /// IAM client for a partition.
    pub fn iam(&self, partition: Partition) -> aws_sdk_iam::Client {
        let mut b = aws_sdk_iam::config::Builder::from(&self.base)
            .region(Region::new(partition.iam_region()))
            .timeout_config(timeouts());
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        aws_sdk_iam::Client::from_conf(b.build())
    }

    /// STS client for a region.
    pub fn sts(&self, region: &str) -> aws_sdk_sts::Client {
        let mut b = aws_sdk_sts::config::Builder::from(&self.base)
            .region(Region::new(region.to_string()))
            .timeout_config(timeouts());
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        aws_sdk_sts::Client::from_conf(b.build())
    }

    /// The metrics AWS calls are counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a call and turns its error into [`Error::Aws`]; `Ok` passes through.
    pub(crate) fn track<T, E, R>(
        &self,
        service: &'static str,
        operation: &'static str,
        object: &str,
        result: Result<T, SdkError<E, R>>,
    ) -> Result<T, Error>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        match result {
            Ok(v) => {
                self.metrics.aws_request(service, operation, "OK");
                Ok(v)
            }
            Err(e) => {
                let err = aws_error(service, operation, object, &e);
                if let Error::Aws { code, .. } = &err {
                    self.metrics.aws_request(service, operation, code);
                }
                Err(err)
            }
        }
    }
}

/// Converts an SDK error into [`Error::Aws`] with the service's error code when there is one.
pub(crate) fn aws_error<E, R>(
    service: &'static str,
    operation: &'static str,
    object: &str,
    e: &SdkError<E, R>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let (code, message) = match e {
        SdkError::ServiceError(se) => {
            let inner = se.err();
            (
                inner.code().unwrap_or("Unknown").to_string(),
                inner
                    .message()
                    .map(str::to_string)
                    .unwrap_or_else(|| inner.to_string()),
            )
        }
        SdkError::TimeoutError(_) => ("Timeout".to_string(), "request timed out".to_string()),
        SdkError::DispatchFailure(_) => (
            "DispatchFailure".to_string(),
            aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
        ),
        _ => (
            "Unknown".to_string(),
            aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
        ),
    };
    Error::Aws {
        service,
        operation,
        object: object.to_string(),
        code,
        message,
    }
}

/// The AWS error code of an [`Error::Aws`], if it is one.
pub fn error_code(e: &Error) -> Option<&str> {
    match e {
        Error::Aws { code, .. } => Some(code),
        _ => None,
    }
}

#[cfg(test)]
mod least_privilege;
#[cfg(test)]
pub(crate) mod moto;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_follows_region() {
        assert_eq!(Partition::from_region("eu-west-3").as_str(), "aws");
        assert_eq!(Partition::from_region("us-east-1").as_str(), "aws");
        assert_eq!(Partition::from_region("cn-northwest-1").as_str(), "aws-cn");
        assert_eq!(
            Partition::from_region("us-gov-west-1").as_str(),
            "aws-us-gov"
        );
        assert_eq!(bucket_arn(Partition::AwsCn, "b"), "arn:aws-cn:s3:::b");
        assert_eq!(
            s3_endpoint("cn-north-1", Partition::AwsCn),
            "s3.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            role_arn(Partition::AwsUsGov, "123456789012", "r"),
            "arn:aws-us-gov:iam::123456789012:role/r"
        );
    }
}
