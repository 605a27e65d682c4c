//! The `s3` backend on aws-sdk-s3: AWS S3 or any S3-compatible store (custom endpoint,
//! path-style addressing). Credentials come only from the SDK's default chain (environment, web
//! identity token — EKS IRSA —, profile, instance metadata); none are configured here.

use std::error::Error as StdError;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::SystemTime;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
    StorageClass,
};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::config::S3Config;
use crate::store::{
    BoxFuture, ListEntry, ObjectMeta, ObjectStore, ObjstoreError, Result, S3Error, tmp_path_beside,
    validate_key,
};

/// Default multipart part size (and the size above which `put_file` goes multipart).
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;
/// S3's smallest allowed part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// Parts of one multipart upload in flight at once.
const PART_CONCURRENCY: usize = 4;
/// Keys per `DeleteObjects` request (S3's limit).
const DELETE_BATCH: usize = 1000;

/// A bucket in S3.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    location: String,
    part_size: u64,
    list_page_size: Option<i32>,
    storage_class: Option<StorageClass>,
}

impl fmt::Debug for S3Store {
    // The client's config is left out on purpose: nothing credential-related is ever printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Opens the bucket with region and credentials from the environment (the SDK default
    /// chains), `config.region` overriding the region chain.
    pub async fn from_env(config: &S3Config) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if !config.region.trim().is_empty() {
            loader = loader.region(Region::new(config.region.trim().to_string()));
        }
        let sdk = loader.load().await;
        Self::new(config, &sdk)
    }

    /// Opens the bucket on an already loaded SDK configuration (tests pass one with their own
    /// endpoint and dummy credentials). Endpoint, addressing style and region from `config`
    /// take precedence over `sdk`.
    pub fn new(config: &S3Config, sdk: &SdkConfig) -> Result<Self> {
        config.validate()?;
        let bucket = config.bucket_name.trim().to_string();
        let mut builder = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(config.path_style())
            .use_dual_stack(config.dualstack_enabled);
        if !config.region.trim().is_empty() {
            builder = builder.region(Region::new(config.region.trim().to_string()));
        }
        if let Some(url) = config.endpoint_url() {
            builder = builder.endpoint_url(url);
        }
        let s3 = builder.build();
        if s3.region().is_none() {
            return Err(ObjstoreError::Config(
                "blocks_storage.s3.region is empty and the environment names no region \
                 (AWS_REGION, profile or instance metadata)"
                    .into(),
            ));
        }
        let part_size = match config.part_size {
            0 => DEFAULT_PART_SIZE,
            n => n.max(MIN_PART_SIZE),
        };
        Ok(S3Store {
            client: Client::from_conf(s3),
            location: format!("s3://{bucket}"),
            bucket,
            part_size,
            list_page_size: None,
            storage_class: (!config.storage_class.is_empty())
                .then(|| StorageClass::from(config.storage_class.as_str())),
        })
    }

    /// Asks for at most `n` keys per `ListObjectsV2` page (S3's default and maximum is 1000);
    /// tests use small pages to exercise pagination.
    pub fn with_list_page_size(mut self, n: i32) -> Self {
        self.list_page_size = Some(n.clamp(1, 1000));
        self
    }

    /// The multipart part size in bytes.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// Maps an SDK error: missing objects become [`ObjstoreError::NotFound`], unsatisfiable ranges
    /// [`ObjstoreError::InvalidRange`], everything else [`ObjstoreError::S3`] with the AWS code.
    fn err<E>(&self, op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> ObjstoreError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = match (&err, err.code()) {
            (_, Some(code)) => code.to_string(),
            (SdkError::DispatchFailure(_), _) => "DispatchFailure".into(),
            (SdkError::TimeoutError(_), _) => "Timeout".into(),
            (SdkError::ConstructionFailure(_), _) => "ConstructionFailure".into(),
            (SdkError::ResponseError(_), _) => "ResponseError".into(),
            _ if status == Some(404) => "NotFound".into(),
            _ => "Unknown".into(),
        };
        let bucket = self.location.clone();
        let key = key.to_string();
        match code.as_str() {
            "NoSuchKey" | "NotFound" => return ObjstoreError::NotFound { op, bucket, key },
            "InvalidRange" => {
                return ObjstoreError::InvalidRange {
                    op,
                    bucket,
                    key,
                    start: 0,
                    end: 0,
                    size: None,
                };
            }
            _ => {}
        }
        let message = match err.message() {
            Some(m) => m.to_string(),
            None => DisplayErrorContext(&err).to_string(),
        };
        ObjstoreError::S3(Box::new(S3Error {
            op,
            bucket,
            key,
            code,
            message,
            status,
            source: Box::new(err),
        }))
    }

    fn body_err(&self, op: &'static str, key: &str, e: impl fmt::Display) -> ObjstoreError {
        ObjstoreError::S3(Box::new(S3Error {
            op,
            bucket: self.location.clone(),
            key: key.to_string(),
            code: "ResponseBody".into(),
            message: format!("reading the response body: {e}"),
            status: None,
            source: e.to_string().into(),
        }))
    }

    fn local(
        &self,
        op: &'static str,
        key: &str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> ObjstoreError {
        let (bucket, key, path) = (self.location.clone(), key.to_string(), path.to_path_buf());
        move |source| ObjstoreError::LocalIo {
            op,
            bucket,
            key,
            path,
            source,
        }
    }

    async fn file_stream(
        &self,
        op: &'static str,
        key: &str,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| self.local(op, key, path)(std::io::Error::other(e)))
    }

    async fn put_multipart(&self, key: &str, path: &Path, len: u64) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_storage_class(self.storage_class.clone())
            .send()
            .await
            .map_err(|e| self.err("CreateMultipartUpload", key, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(ObjstoreError::S3(Box::new(S3Error {
                op: "CreateMultipartUpload",
                bucket: self.location.clone(),
                key: key.to_string(),
                code: "MissingUploadId".into(),
                message: "response carried no UploadId".into(),
                status: None,
                source: "missing UploadId".into(),
            })));
        };
        let result = self.upload_parts(key, path, len, &upload_id).await;
        let result = match result {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.err("CompleteMultipartUpload", key, e)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Best effort: leaving the upload would keep billing for its parts.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        len: u64,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 0i32;
        while offset < len || !tasks.is_empty() {
            if offset < len && tasks.len() < PART_CONCURRENCY {
                number += 1;
                let part_len = self.part_size.min(len - offset);
                let body = self
                    .file_stream("UploadPart", key, path, offset, part_len)
                    .await?;
                let request = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .content_length(part_len as i64)
                    .body(body);
                tasks.spawn(async move { (number, request.send().await) });
                offset += part_len;
                continue;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (number, sent) = joined.map_err(|e| self.body_err("UploadPart", key, e))?;
            let out = sent.map_err(|e| self.err("UploadPart", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            );
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    async fn list_all(&self, prefix: &str, delimiter: bool) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .set_max_keys(self.list_page_size);
            if delimiter {
                req = req.delimiter("/");
            }
            let page = req
                .send()
                .await
                .map_err(|e| self.err("ListObjectsV2", prefix, e))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                out.push(ListEntry::Object {
                    key: key.to_string(),
                    meta: ObjectMeta {
                        size: obj.size().unwrap_or(0).max(0) as u64,
                        last_modified: obj
                            .last_modified()
                            .and_then(|t| SystemTime::try_from(*t).ok())
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    },
                });
            }
            for p in page.common_prefixes() {
                if let Some(p) = p.prefix() {
                    out.push(ListEntry::Prefix(p.to_string()));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key().cmp(b.key()));
        out.dedup_by(|a, b| a.key() == b.key());
        Ok(out)
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>> {
        validate_key("HeadObject", key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified: out
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Err(e) => match self.err("HeadObject", key, e) {
                ObjstoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }
}

impl ObjectStore for S3Store {
    fn location(&self) -> &str {
        &self.location
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_key("PutObject", key)?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .set_storage_class(self.storage_class.clone())
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| self.err("PutObject", key, e))?;
            Ok(())
        })
    }

    fn put_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_key("PutFile", key)?;
            let len = tokio::fs::metadata(path)
                .await
                .map_err(self.local("PutFile", key, path))?
                .len();
            if len > self.part_size {
                return self.put_multipart(key, path, len).await;
            }
            let body = self.file_stream("PutFile", key, path, 0, len).await?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .set_storage_class(self.storage_class.clone())
                .content_length(len as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| self.err("PutObject", key, e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            validate_key("GetObject", key)?;
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.err("GetObject", key, e))?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| self.body_err("GetObject", key, e))?;
            Ok(body.into_bytes())
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let op = "GetObjectRange";
            validate_key(op, key)?;
            let invalid = |size| ObjstoreError::InvalidRange {
                op,
                bucket: self.location.clone(),
                key: key.to_string(),
                start: range.start,
                end: range.end,
                size,
            };
            if range.start > range.end {
                return Err(invalid(None));
            }
            if range.start == range.end {
                // HTTP cannot ask for zero bytes; still report a missing object.
                return match self.head_object(key).await? {
                    Some(_) => Ok(Bytes::new()),
                    None => Err(ObjstoreError::NotFound {
                        op,
                        bucket: self.location.clone(),
                        key: key.to_string(),
                    }),
                };
            }
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .send()
                .await
                .map_err(|e| match self.err(op, key, e) {
                    ObjstoreError::InvalidRange { .. } => invalid(None),
                    other => other,
                })?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| self.body_err(op, key, e))?;
            Ok(body.into_bytes())
        })
    }

    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let op = "GetToFile";
            validate_key(op, key)?;
            let mut out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.err(op, key, e))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(self.local(op, key, path))?;
            }
            let tmp = tmp_path_beside(path);
            let result = async {
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(self.local(op, key, path))?;
                while let Some(chunk) = out
                    .body
                    .try_next()
                    .await
                    .map_err(|e| self.body_err(op, key, e))?
                {
                    file.write_all(&chunk)
                        .await
                        .map_err(self.local(op, key, path))?;
                }
                file.sync_all().await.map_err(self.local(op, key, path))?;
                drop(file);
                tokio::fs::rename(&tmp, path)
                    .await
                    .map_err(self.local(op, key, path))
            }
            .await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            result
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        Box::pin(self.head_object(key))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: bool,
    ) -> BoxFuture<'a, Result<Vec<ListEntry>>> {
        Box::pin(self.list_all(prefix, delimiter))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_key("DeleteObject", key)?;
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.err("DeleteObject", key, e))?;
            Ok(())
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let keys: Vec<String> = self
                .list_all(prefix, false)
                .await?
                .into_iter()
                .filter_map(|e| match e {
                    ListEntry::Object { key, .. } => Some(key),
                    ListEntry::Prefix(_) => None,
                })
                .collect();
            let mut deleted = 0u64;
            for batch in keys.chunks(DELETE_BATCH) {
                let objects = batch
                    .iter()
                    .map(|k| ObjectIdentifier::builder().key(k).build())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ObjstoreError::S3(Box::new(S3Error {
                            op: "DeleteObjects",
                            bucket: self.location.clone(),
                            key: prefix.to_string(),
                            code: "ConstructionFailure".into(),
                            message: e.to_string(),
                            status: None,
                            source: Box::new(e),
                        }))
                    })?;
                let delete = Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| {
                        ObjstoreError::S3(Box::new(S3Error {
                            op: "DeleteObjects",
                            bucket: self.location.clone(),
                            key: prefix.to_string(),
                            code: "ConstructionFailure".into(),
                            message: e.to_string(),
                            status: None,
                            source: Box::new(e),
                        }))
                    })?;
                let out = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| self.err("DeleteObjects", prefix, e))?;
                if let Some(failed) = out.errors().first() {
                    return Err(ObjstoreError::S3(Box::new(S3Error {
                        op: "DeleteObjects",
                        bucket: self.location.clone(),
                        key: failed.key().unwrap_or(prefix).to_string(),
                        code: failed.code().unwrap_or("Unknown").to_string(),
                        message: failed.message().unwrap_or_default().to_string(),
                        status: None,
                        source: format!(
                            "{} of {} keys not deleted",
                            out.errors().len(),
                            batch.len()
                        )
                        .into(),
                    })));
                }
                deleted += batch.len() as u64;
            }
            Ok(deleted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build()
    }

    #[test]
    fn missing_bucket_name_is_a_config_error() {
        let err = S3Store::new(&S3Config::default(), &sdk()).unwrap_err();
        assert!(err.to_string().contains("bucket_name"), "{err}");
    }

    #[test]
    fn missing_region_is_a_config_error_naming_the_key() {
        let cfg = S3Config {
            bucket_name: "b".into(),
            ..S3Config::default()
        };
        let err = S3Store::new(&cfg, &sdk()).unwrap_err();
        assert!(
            err.to_string().contains("blocks_storage.s3.region"),
            "{err}"
        );
    }

    #[test]
    fn part_size_defaults_and_is_raised_to_the_s3_minimum() {
        let mut cfg = S3Config {
            bucket_name: "b".into(),
            region: "eu-west-1".into(),
            ..S3Config::default()
        };
        assert_eq!(
            S3Store::new(&cfg, &sdk()).unwrap().part_size(),
            DEFAULT_PART_SIZE
        );
        cfg.part_size = 1024;
        assert_eq!(
            S3Store::new(&cfg, &sdk()).unwrap().part_size(),
            MIN_PART_SIZE
        );
    }

    #[test]
    fn debug_output_shows_bucket_only() {
        let cfg = S3Config {
            bucket_name: "metrics".into(),
            region: "eu-west-1".into(),
            ..S3Config::default()
        };
        let s = format!("{:?}", S3Store::new(&cfg, &sdk()).unwrap());
        assert_eq!(
            s,
            "S3Store { bucket: \"metrics\", part_size: 67108864, .. }"
        );
    }
}
