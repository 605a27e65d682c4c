//! The ingester's gRPC API (`rimir.Ingester`): hand-written prost messages, a hand-written tonic
//! service and client (no protoc), and the `hot` message compression of pushes.
//!
//! `Push` carries a remote-write `WriteRequest`, compressed as a whole with snappy, gzip or not
//! at all, and the metric metadata the ingester keeps; the query RPCs (`QueryStream`,
//! `LabelNames`, `LabelValues`, `MetricsMetadata`) serve the querier. In-process callers (`--target=all`) use the same
//! [`IngesterService`] trait without the network.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::Compression;
use crate::remote_write::MetricMetadata;
use rimir_tsdb::head::SeriesSamples;
use rimir_tsdb::labels::LabelRef;
use rimir_tsdb::series::Series;

/// gRPC service name.
pub const SERVICE_NAME: &str = "rimir.Ingester";

/// A push of one tenant's series to one ingester.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    /// Tenant.
    #[prost(string, tag = "1")]
    pub tenant: String,
    /// How `payload` is compressed: 0 none, 1 snappy, 2 gzip.
    #[prost(int32, tag = "2")]
    pub compression: i32,
    /// A remote-write `WriteRequest`, labels sorted and validated by the distributor. Shared,
    /// not copied, when several ingesters get the same series.
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: bytes::Bytes,
    /// This ingester's share of the tenant's active-series limit (0: unlimited).
    #[prost(uint64, tag = "4")]
    pub max_series: u64,
    /// Metric metadata this ingester keeps for the tenant (validated by the distributor).
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<MetricMetadata>,
}

/// The outcome of a push.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushResponse {
    /// Samples stored.
    #[prost(uint64, tag = "1")]
    pub samples_appended: u64,
    /// Samples refused (series limit, out of order, duplicates).
    #[prost(uint64, tag = "2")]
    pub samples_rejected: u64,
    /// A message per refused series kind, naming the series and the limit.
    #[prost(string, repeated, tag = "3")]
    pub errors: Vec<String>,
}

/// A distributor's question to the ingester holding an HA cluster's election: may `replica`
/// write for (`tenant`, `cluster`)? Asking on behalf of the elected replica also records it
/// as alive.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HaElectRequest {
    /// Tenant.
    #[prost(string, tag = "1")]
    pub tenant: String,
    /// The value of the tenant's `ha_cluster_label`.
    #[prost(string, tag = "2")]
    pub cluster: String,
    /// The value of the tenant's `ha_replica_label` on the push being decided.
    #[prost(string, tag = "3")]
    pub replica: String,
    /// After this long without news of the elected replica, `replica` takes over.
    #[prost(uint64, tag = "4")]
    pub failover_timeout_ms: u64,
}

/// The election of an HA cluster after a [`HaElectRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct HaElectResponse {
    /// The elected replica.
    #[prost(string, tag = "1")]
    pub elected: String,
    /// How long ago, by the ingester's clock, the elected replica was last reported.
    #[prost(uint64, tag = "2")]
    pub last_seen_age_ms: u64,
}

/// A label matcher on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MatcherPb {
    /// 0 `=`, 1 `!=`, 2 `=~`, 3 `!~`.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// Label name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Value or pattern.
    #[prost(string, tag = "3")]
    pub value: String,
}

/// Selects series of a tenant in a time range.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryRequest {
    /// Tenant.
    #[prost(string, tag = "1")]
    pub tenant: String,
    /// All must match.
    #[prost(message, repeated, tag = "2")]
    pub matchers: Vec<MatcherPb>,
    /// Inclusive start, ms.
    #[prost(int64, tag = "3")]
    pub mint: i64,
    /// Inclusive end, ms.
    #[prost(int64, tag = "4")]
    pub maxt: i64,
}

/// One series with samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SeriesPb {
    /// Labels sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<crate::remote_write::Label>,
    /// Samples in time order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<crate::remote_write::PbSample>,
}

/// One batch of a `QueryStream` answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryStreamResponse {
    /// Series of this batch.
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<SeriesPb>,
}

/// Asks for label names (`name` empty) or one label's values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelRequest {
    /// Tenant.
    #[prost(string, tag = "1")]
    pub tenant: String,
    /// Label whose values are wanted (LabelValues only).
    #[prost(string, tag = "2")]
    pub name: String,
    /// Restricts to matching series.
    #[prost(message, repeated, tag = "3")]
    pub matchers: Vec<MatcherPb>,
    /// Inclusive start, ms.
    #[prost(int64, tag = "4")]
    pub mint: i64,
    /// Inclusive end, ms.
    #[prost(int64, tag = "5")]
    pub maxt: i64,
}

/// Sorted, unique strings (names or values).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelResponse {
    /// The strings.
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

/// Asks for a tenant's metric metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRequest {
    /// Tenant.
    #[prost(string, tag = "1")]
    pub tenant: String,
    /// Only this metric's (all when empty).
    #[prost(string, tag = "2")]
    pub metric: String,
}

/// A tenant's metric metadata, sorted by metric name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataResponse {
    /// One entry per distinct metadata of a metric.
    #[prost(message, repeated, tag = "1")]
    pub metadata: Vec<MetricMetadata>,
}

/// Empty request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InfoRequest {}

/// Who an ingester is, for DNS-discovered ring members.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InfoResponse {
    /// Ring instance id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Zone.
    #[prost(string, tag = "2")]
    pub zone: String,
    /// Whether WAL replay is done.
    #[prost(bool, tag = "3")]
    pub ready: bool,
}

/// Series handed to an in-process ingester (`--target=all`): the validated series of a push
/// with their label strings copied into one buffer, so nothing is encoded, compressed or parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesBatch {
    text: String,
    /// Per label: end of its name and of its value in `text` (each starts where the previous
    /// string ended).
    labels: Vec<(u32, u32)>,
    samples: Vec<rimir_tsdb::series::Sample>,
    /// Per series: end of its labels in `labels` and of its samples in `samples`.
    series: Vec<(u32, u32)>,
}

impl SeriesBatch {
    /// An empty batch with room for `series` series.
    pub fn with_capacity(series: usize) -> Self {
        Self {
            text: String::with_capacity(series * 96),
            labels: Vec::with_capacity(series * 6),
            samples: Vec::with_capacity(series),
            series: Vec::with_capacity(series),
        }
    }

    /// Appends a series (labels sorted by name, names unique).
    pub fn push(&mut self, labels: &[LabelRef<'_>], samples: &[rimir_tsdb::series::Sample]) {
        for l in labels {
            self.text.push_str(l.name);
            let name_end = self.text.len() as u32;
            self.text.push_str(l.value);
            self.labels.push((name_end, self.text.len() as u32));
        }
        self.samples.extend_from_slice(samples);
        self.series
            .push((self.labels.len() as u32, self.samples.len() as u32));
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether there is no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Total number of samples.
    pub fn num_samples(&self) -> usize {
        self.samples.len()
    }

    /// Every label of every series, borrowed, in order.
    pub fn label_refs(&self) -> Vec<LabelRef<'_>> {
        let mut start = 0usize;
        self.labels
            .iter()
            .map(|&(name_end, value_end)| {
                let (n, v) = (name_end as usize, value_end as usize);
                // Ends were taken from `text` after whole strings were pushed: always in
                // bounds and on character boundaries.
                let l = LabelRef {
                    name: self.text.get(start..n).unwrap_or_default(),
                    value: self.text.get(n..v).unwrap_or_default(),
                };
                start = v;
                l
            })
            .collect()
    }

    /// The series over `labels` (the result of [`SeriesBatch::label_refs`]).
    pub fn series<'a>(&'a self, labels: &'a [LabelRef<'a>]) -> Vec<SeriesSamples<'a>> {
        let (mut l0, mut s0) = (0usize, 0usize);
        self.series
            .iter()
            .map(|&(l1, s1)| {
                let (l1, s1) = (l1 as usize, s1 as usize);
                let out = (
                    labels.get(l0..l1).unwrap_or_default(),
                    self.samples.get(s0..s1).unwrap_or_default(),
                );
                (l0, s0) = (l1, s1);
                out
            })
            .collect()
    }
}

/// What an ingester does, whether called in-process or over gRPC.
#[tonic::async_trait]
pub trait IngesterService: Send + Sync + 'static {
    /// Stores a tenant's series.
    async fn push(&self, req: PushRequest) -> Result<PushResponse, Status>;
    /// Stores a tenant's series handed over in-process: what [`IngesterService::push`] stores
    /// for the same series, without encoding. The default encodes them into a [`PushRequest`].
    async fn push_local(
        &self,
        tenant: String,
        batch: SeriesBatch,
        max_series: u64,
    ) -> Result<PushResponse, Status> {
        let labels = batch.label_refs();
        let mut payload = Vec::new();
        for (l, s) in batch.series(&labels) {
            crate::remote_write::encode_series(&mut payload, l, s);
        }
        self.push(PushRequest {
            tenant,
            compression: 0,
            payload: payload.into(),
            max_series,
            metadata: Vec::new(),
        })
        .await
    }
    /// Streams matching series in batches.
    async fn query_stream(&self, req: QueryRequest) -> Result<Vec<QueryStreamResponse>, Status>;
    /// Label names of matching series.
    async fn label_names(&self, req: LabelRequest) -> Result<LabelResponse, Status>;
    /// Values of `req.name` on matching series.
    async fn label_values(&self, req: LabelRequest) -> Result<LabelResponse, Status>;
    /// The ingester's identity.
    async fn info(&self) -> Result<InfoResponse, Status>;
    /// A tenant's metric metadata.
    async fn metrics_metadata(&self, req: MetadataRequest) -> Result<MetadataResponse, Status>;
    /// Decides an HA cluster's election ([`crate::ha::HaElections`]).
    async fn ha_elect(&self, req: HaElectRequest) -> Result<HaElectResponse, Status>;
    /// The series `query_stream` would stream, handed over without the wire encoding when the
    /// ingester runs in this process (`--target=all`); `None` for a remote ingester, whose
    /// callers use `query_stream`.
    async fn select_local(&self, _req: &QueryRequest) -> Option<Result<Vec<Series>, Status>> {
        None
    }
}

/// Wire code of a compression.
pub fn compression_code(c: Compression) -> i32 {
    match c {
        Compression::None => 0,
        Compression::Snappy => 1,
        Compression::Gzip => 2,
    }
}

/// Compresses a push payload.
pub fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(data)
            .unwrap_or_else(|_| data.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            // Writing to a Vec cannot fail.
            let _ = e.write_all(data);
            e.finish().unwrap_or_default()
        }
    }
}

/// Decompresses a push payload, refusing output beyond `limit` bytes; an uncompressed payload
/// is borrowed, not copied.
pub fn decompress(
    code: i32,
    data: &[u8],
    limit: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, Status> {
    match code {
        0 => Ok(std::borrow::Cow::Borrowed(data)),
        1 => {
            let n = snap::raw::decompress_len(data)
                .map_err(|e| Status::invalid_argument(format!("snappy payload: {e}")))?;
            if n > limit {
                return Err(Status::resource_exhausted(format!(
                    "payload of {n} bytes exceeds {limit}"
                )));
            }
            snap::raw::Decoder::new()
                .decompress_vec(data)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| Status::invalid_argument(format!("snappy payload: {e}")))
        }
        2 => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Status::invalid_argument(format!("gzip payload: {e}")))?;
            if out.len() > limit {
                return Err(Status::resource_exhausted(format!(
                    "payload exceeds {limit} bytes"
                )));
            }
            Ok(std::borrow::Cow::Owned(out))
        }
        c => Err(Status::invalid_argument(format!("unknown compression {c}"))),
    }
}

type Codec<A, B> = tonic_prost::ProstCodec<A, B>;

/// The tonic server of an [`IngesterService`].
#[derive(Clone)]
pub struct IngesterServer {
    inner: Arc<dyn IngesterService>,
    max_message_size: usize,
}

impl IngesterServer {
    /// Serves `inner`, accepting messages up to `max_message_size` bytes.
    pub fn new(inner: Arc<dyn IngesterService>, max_message_size: usize) -> Self {
        Self {
            inner,
            max_message_size,
        }
    }

    /// Serves on `listener` until `shutdown` completes. (The future is boxed so that the
    /// server's code is compiled once, here, not in every crate that starts one.)
    pub fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: crate::BoxFuture<'static, ()>,
    ) -> crate::BoxFuture<'static, Result<(), tonic::transport::Error>> {
        Box::pin(async move {
            tonic::transport::Server::builder()
                .add_service(self)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        })
    }
}

impl NamedService for IngesterServer {
    const NAME: &'static str = SERVICE_NAME;
}

macro_rules! unary {
    ($svc:ident, $req:ty, $resp:ty, |$inner:ident, $r:ident| $body:expr) => {
        struct $svc(Arc<dyn IngesterService>);
        impl tonic::server::UnaryService<$req> for $svc {
            type Response = $resp;
            type Future = BoxFuture<Response<$resp>, Status>;
            fn call(&mut self, request: Request<$req>) -> Self::Future {
                let $inner = self.0.clone();
                Box::pin(async move {
                    let $r = request.into_inner();
                    $body.await.map(Response::new)
                })
            }
        }
    };
}

unary!(PushSvc, PushRequest, PushResponse, |i, r| i.push(r));
unary!(LabelNamesSvc, LabelRequest, LabelResponse, |i, r| i
    .label_names(r));
unary!(LabelValuesSvc, LabelRequest, LabelResponse, |i, r| i
    .label_values(r));
unary!(InfoSvc, InfoRequest, InfoResponse, |i, _r| i.info());
unary!(MetadataSvc, MetadataRequest, MetadataResponse, |i, r| i
    .metrics_metadata(r));
unary!(HaElectSvc, HaElectRequest, HaElectResponse, |i, r| i
    .ha_elect(r));

type QueryStream = std::pin::Pin<
    Box<dyn tokio_stream_alias::Stream<Item = Result<QueryStreamResponse, Status>> + Send>,
>;

mod tokio_stream_alias {
    pub use tonic::codegen::tokio_stream::Stream;
}

struct QueryStreamSvc(Arc<dyn IngesterService>);
impl tonic::server::ServerStreamingService<QueryRequest> for QueryStreamSvc {
    type Response = QueryStreamResponse;
    type ResponseStream = QueryStream;
    type Future = BoxFuture<Response<QueryStream>, Status>;
    fn call(&mut self, request: Request<QueryRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let batches = inner.query_stream(request.into_inner()).await?;
            let s: QueryStream = Box::pin(tonic::codegen::tokio_stream::iter(
                batches.into_iter().map(Ok),
            ));
            Ok(Response::new(s))
        })
    }
}

impl<B> Service<http::Request<B>> for IngesterServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let max = self.max_message_size;
        macro_rules! grpc {
            ($codec:ty) => {
                tonic::server::Grpc::new(<$codec>::default())
                    .apply_max_message_size_config(Some(max), Some(max))
            };
        }
        match req.uri().path() {
            "/rimir.Ingester/Push" => Box::pin(async move {
                Ok(grpc!(Codec<PushResponse, PushRequest>)
                    .unary(PushSvc(inner), req)
                    .await)
            }),
            "/rimir.Ingester/QueryStream" => Box::pin(async move {
                Ok(grpc!(Codec<QueryStreamResponse, QueryRequest>)
                    .server_streaming(QueryStreamSvc(inner), req)
                    .await)
            }),
            "/rimir.Ingester/LabelNames" => Box::pin(async move {
                Ok(grpc!(Codec<LabelResponse, LabelRequest>)
                    .unary(LabelNamesSvc(inner), req)
                    .await)
            }),
            "/rimir.Ingester/LabelValues" => Box::pin(async move {
                Ok(grpc!(Codec<LabelResponse, LabelRequest>)
                    .unary(LabelValuesSvc(inner), req)
                    .await)
            }),
            "/rimir.Ingester/Info" => Box::pin(async move {
                Ok(grpc!(Codec<InfoResponse, InfoRequest>)
                    .unary(InfoSvc(inner), req)
                    .await)
            }),
            "/rimir.Ingester/HaElect" => Box::pin(async move {
                Ok(grpc!(Codec<HaElectResponse, HaElectRequest>)
                    .unary(HaElectSvc(inner), req)
                    .await)
            }),
            "/rimir.Ingester/MetricsMetadata" => Box::pin(async move {
                Ok(grpc!(Codec<MetadataResponse, MetadataRequest>)
                    .unary(MetadataSvc(inner), req)
                    .await)
            }),
            _ => Box::pin(async move {
                Ok(Status::unimplemented("no such method").into_http::<tonic::body::Body>())
            }),
        }
    }
}

/// A gRPC client of one ingester: one HTTP/2 connection reused by every call, connected lazily
/// and re-established after failures; every call carries a deadline.
#[derive(Clone)]
pub struct IngesterClient {
    channel: Channel,
    timeout: Duration,
    max_message_size: usize,
}

impl IngesterClient {
    /// A client of the ingester at `addr` (`host:port`); calls time out after `timeout`.
    pub fn new(addr: &str, timeout: Duration, max_message_size: usize) -> Result<Self, Status> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("ingester address {addr}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20));
        Ok(Self {
            channel: endpoint.connect_lazy(),
            timeout,
            max_message_size,
        })
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size)
    }

    fn request<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        r.set_timeout(self.timeout);
        r
    }

    async fn unary<A, B>(&self, path: &'static str, m: A) -> Result<B, Status>
    where
        A: prost::Message + Send + Sync + 'static,
        B: prost::Message + Default + Send + Sync + 'static,
    {
        let mut g = self.grpc();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connecting: {e}")))?;
        let r = g
            .unary(
                self.request(m),
                http::uri::PathAndQuery::from_static(path),
                Codec::<A, B>::default(),
            )
            .await?;
        Ok(r.into_inner())
    }
}

#[tonic::async_trait]
impl IngesterService for IngesterClient {
    async fn push(&self, req: PushRequest) -> Result<PushResponse, Status> {
        self.unary("/rimir.Ingester/Push", req).await
    }

    async fn query_stream(&self, req: QueryRequest) -> Result<Vec<QueryStreamResponse>, Status> {
        let mut g = self.grpc();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connecting: {e}")))?;
        let mut stream = g
            .server_streaming(
                self.request(req),
                http::uri::PathAndQuery::from_static("/rimir.Ingester/QueryStream"),
                Codec::<QueryRequest, QueryStreamResponse>::default(),
            )
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            out.push(batch);
        }
        Ok(out)
    }

    async fn label_names(&self, req: LabelRequest) -> Result<LabelResponse, Status> {
        self.unary("/rimir.Ingester/LabelNames", req).await
    }

    async fn label_values(&self, req: LabelRequest) -> Result<LabelResponse, Status> {
        self.unary("/rimir.Ingester/LabelValues", req).await
    }

    async fn info(&self) -> Result<InfoResponse, Status> {
        self.unary("/rimir.Ingester/Info", InfoRequest {}).await
    }

    async fn metrics_metadata(&self, req: MetadataRequest) -> Result<MetadataResponse, Status> {
        self.unary("/rimir.Ingester/MetricsMetadata", req).await
    }

    async fn ha_elect(&self, req: HaElectRequest) -> Result<HaElectResponse, Status> {
        self.unary("/rimir.Ingester/HaElect", req).await
    }
}

/// Binds a gRPC listener on `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        pushes: Mutex<Vec<PushRequest>>,
        ha: crate::ha::HaElections,
    }

    #[tonic::async_trait]
    impl IngesterService for Fake {
        async fn push(&self, req: PushRequest) -> Result<PushResponse, Status> {
            let payload = decompress(req.compression, &req.payload, 1 << 20)?;
            let n = crate::remote_write::WriteRequestRef::decode(&payload)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
                .num_samples();
            self.pushes.lock().unwrap().push(req);
            Ok(PushResponse {
                samples_appended: n as u64,
                ..Default::default()
            })
        }
        async fn query_stream(
            &self,
            req: QueryRequest,
        ) -> Result<Vec<QueryStreamResponse>, Status> {
            Ok((0..3)
                .map(|i| QueryStreamResponse {
                    series: vec![SeriesPb {
                        labels: vec![crate::remote_write::Label {
                            name: "tenant".into(),
                            value: format!("{}-{i}", req.tenant),
                        }],
                        samples: vec![],
                    }],
                })
                .collect())
        }
        async fn label_names(&self, _req: LabelRequest) -> Result<LabelResponse, Status> {
            Ok(LabelResponse {
                values: vec!["a".into(), "b".into()],
            })
        }
        async fn label_values(&self, req: LabelRequest) -> Result<LabelResponse, Status> {
            Ok(LabelResponse {
                values: vec![req.name],
            })
        }
        async fn info(&self) -> Result<InfoResponse, Status> {
            Ok(InfoResponse {
                id: "ingester-7".into(),
                zone: "z".into(),
                ready: true,
            })
        }
        async fn metrics_metadata(&self, req: MetadataRequest) -> Result<MetadataResponse, Status> {
            let metadata = self
                .pushes
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.tenant == req.tenant)
                .flat_map(|p| p.metadata.iter().cloned())
                .filter(|m| req.metric.is_empty() || m.metric_family_name == req.metric)
                .collect();
            Ok(MetadataResponse { metadata })
        }
        async fn ha_elect(&self, req: HaElectRequest) -> Result<HaElectResponse, Status> {
            Ok(self.ha.elect(&req, std::time::Instant::now()).response)
        }
    }

    #[test]
    fn compression_round_trips_and_limits_output() {
        let data: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Snappy, Compression::Gzip] {
            let z = compress(c, &data);
            assert_eq!(
                *decompress(compression_code(c), &z, 1 << 20).unwrap(),
                data[..]
            );
            assert!(decompress(compression_code(c), &z, 100).is_err() || c == Compression::None);
        }
        assert!(decompress(1, b"not snappy at all", 1 << 20).is_err());
        assert!(decompress(9, b"", 1).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn series_batch_round_trips_and_default_push_local_encodes_it() {
        let a = [
            LabelRef {
                name: "__name__",
                value: "up",
            },
            LabelRef {
                name: "zöne",
                value: "ünïcode",
            },
        ];
        let b = [LabelRef {
            name: "__name__",
            value: "x",
        }];
        let mut batch = SeriesBatch::with_capacity(2);
        batch.push(&a, &[(1, 1.0), (2, 2.0)]);
        batch.push(&b, &[(3, -0.5)]);
        assert_eq!((batch.len(), batch.num_samples()), (2, 3));
        let labels = batch.label_refs();
        let series = batch.series(&labels);
        assert_eq!(series[0], (&a[..], &[(1, 1.0), (2, 2.0)][..]));
        assert_eq!(series[1], (&b[..], &[(3, -0.5)][..]));
        // A service without its own push_local gets the same series as a Push.
        let fake = Fake::default();
        let r = fake.push_local("t".into(), batch.clone(), 7).await.unwrap();
        assert_eq!(r.samples_appended, 3);
        let pushed = fake.pushes.lock().unwrap()[0].clone();
        assert_eq!((pushed.tenant.as_str(), pushed.max_series), ("t", 7));
        let w = crate::remote_write::WriteRequestRef::decode(&pushed.payload).unwrap();
        let got: Vec<_> = w.iter().collect();
        assert_eq!(got, series);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn client_and_server_talk_over_loopback() {
        let fake = Arc::new(Fake::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = IngesterServer::new(fake.clone(), 1 << 20);
        let handle = tokio::spawn(server.serve(
            listener,
            Box::pin(async {
                let _ = rx.await;
            }),
        ));
        let client =
            IngesterClient::new(&addr.to_string(), Duration::from_secs(5), 1 << 20).unwrap();
        let mut payload = Vec::new();
        crate::remote_write::encode_series(
            &mut payload,
            &[crate::remote_write::LabelRef {
                name: "__name__",
                value: "up",
            }],
            &[(1, 1.0), (2, 2.0)],
        );
        for c in [Compression::Snappy, Compression::Gzip, Compression::None] {
            let resp = client
                .push(PushRequest {
                    tenant: "t1".into(),
                    compression: compression_code(c),
                    payload: compress(c, &payload).into(),
                    max_series: 0,
                    metadata: vec![MetricMetadata {
                        r#type: 2,
                        metric_family_name: format!("m_{}", compression_code(c)),
                        help: "Help.".into(),
                        unit: "bytes".into(),
                    }],
                })
                .await
                .unwrap();
            assert_eq!(resp.samples_appended, 2);
        }
        assert_eq!(fake.pushes.lock().unwrap().len(), 3);
        let md = client
            .metrics_metadata(MetadataRequest {
                tenant: "t1".into(),
                metric: "m_2".into(),
            })
            .await
            .unwrap();
        assert_eq!(md.metadata.len(), 1);
        assert_eq!(
            (md.metadata[0].r#type, md.metadata[0].unit.as_str()),
            (2, "bytes")
        );
        let batches = client
            .query_stream(QueryRequest {
                tenant: "t9".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].series[0].labels[0].value, "t9-2");
        for (replica, elected) in [("b", "b"), ("a", "b")] {
            let r = client
                .ha_elect(HaElectRequest {
                    tenant: "t1".into(),
                    cluster: "prom".into(),
                    replica: replica.into(),
                    failover_timeout_ms: 30_000,
                })
                .await
                .unwrap();
            assert_eq!(r.elected, elected, "asked for {replica}");
        }
        assert_eq!(client.info().await.unwrap().id, "ingester-7");
        let v = client
            .label_values(LabelRequest {
                name: "job".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(v.values, vec!["job".to_string()]);
        let err = client
            .push(PushRequest {
                compression: 1,
                payload: bytes::Bytes::from_static(b"garbage"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let _ = tx.send(());
        handle.await.unwrap().unwrap();
    }
}
