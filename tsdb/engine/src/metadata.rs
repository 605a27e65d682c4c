//! Metric metadata: the type, help and unit of a metric family, as remote-write carries it and the
//! ingesters keep it per tenant. Defined here, below every user, so the query engine's
//! `Queryable` and the server's wire formats share one type.

/// Type, help and unit of a metric family, as remote-write carries them (also the ingester's
/// gRPC message for metadata, hence the protobuf field tags).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MetricMetadata {
    /// `MetricType`: 0 unknown, 1 counter, 2 gauge, 3 histogram, 4 gaugehistogram, 5 summary,
    /// 6 info, 7 stateset.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// Metric family name.
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    /// HELP text.
    #[prost(string, tag = "4")]
    pub help: String,
    /// UNIT.
    #[prost(string, tag = "5")]
    pub unit: String,
}
