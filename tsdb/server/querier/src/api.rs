//! The Prometheus HTTP API under `/prometheus/api/v1/`: `query`, `query_range`, `series`,
//! `labels`, `label/<name>/values`, `metadata`, `status/buildinfo`, with Prometheus' parameters,
//! JSON shapes, error types and status codes. Tenants come from `X-Scope-OrgID`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use promql_parser::parser::Expr;

use crate::querier::TenantSource;
use rimir_core::tenant::{ANONYMOUS, validate_tenant};
use rimir_promql::QueryError;
use rimir_promql::{self, Engine, Value};
use rimir_tsdb::labels::{Labels, Matcher};

/// Earliest time the API accepts (ms), as Prometheus' `minTime`.
const MIN_TIME: i64 = -9_223_309_901_257_974;
/// Latest time the API accepts (ms), as Prometheus' `maxTime`.
const MAX_TIME: i64 = 9_223_309_901_257_974;

/// Most points a range query may return per series, as in Prometheus.
const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Where each tenant's series come from.
    pub tenants: Arc<dyn TenantSource>,
    /// The PromQL engine with its limits.
    pub engine: Engine,
    /// When false, every request is served from tenant `anonymous` and `X-Scope-OrgID` is ignored.
    pub multitenancy: bool,
}

/// The routes under `/prometheus/api/v1/`, GET and POST (form) each.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/prometheus/api/v1/query", get(query).post(query))
        .route(
            "/prometheus/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/prometheus/api/v1/series", get(series).post(series))
        .route("/prometheus/api/v1/labels", get(labels).post(labels))
        .route("/prometheus/api/v1/label/{name}/values", get(label_values))
        .route("/prometheus/api/v1/metadata", get(metadata))
        .route("/prometheus/api/v1/status/buildinfo", get(buildinfo))
        .with_state(state)
}

/// An API error: Prometheus' error type and status code with the message.
#[derive(Debug)]
struct ApiError {
    kind: &'static str,
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_data(message: impl Into<String>) -> Self {
        Self {
            kind: "bad_data",
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let (kind, status) = match &e {
            QueryError::BadData(_) => ("bad_data", StatusCode::BAD_REQUEST),
            QueryError::Execution(_)
            | QueryError::TooManySeries { .. }
            | QueryError::TooManySamples { .. } => ("execution", StatusCode::UNPROCESSABLE_ENTITY),
            QueryError::Timeout { .. } => ("timeout", StatusCode::SERVICE_UNAVAILABLE),
            QueryError::Storage { .. } | QueryError::Metadata(_) => {
                ("internal", StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        Self {
            kind,
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = format!(
            "{{\"status\":\"error\",\"errorType\":\"{}\",\"error\":{}}}",
            self.kind,
            json_str(&self.message)
        );
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

fn success(data: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"status\":\"success\",\"data\":{data}}}"),
    )
        .into_response()
}

/// Results whose JSON is larger than this are streamed in pieces of about this size.
const STREAM_CHUNK: usize = 1 << 20;

/// A success response carrying a query result. A small result is formatted into one body; a
/// large one is formatted on a blocking thread and streamed in ~1 MiB pieces through a short
/// channel, so sending overlaps formatting and the whole text is never held at once.
fn success_result(v: Value) -> Response {
    const PREFIX: &str = "{\"status\":\"success\",\"data\":";
    let len = estimated_len(&v);
    let headers = [(header::CONTENT_TYPE, "application/json")];
    if len <= 2 * STREAM_CHUNK {
        let mut out = String::with_capacity(len + 64);
        out.push_str(PREFIX);
        write_result(&mut out, &v);
        out.push('}');
        return (StatusCode::OK, headers, out).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(STREAM_CHUNK + 64 * 1024);
        out.push_str(PREFIX);
        let mut open = true;
        write_result_with(&mut out, &v, |out| {
            if out.len() >= STREAM_CHUNK {
                let piece = std::mem::replace(out, String::with_capacity(STREAM_CHUNK + 64 * 1024));
                // The client went away: stop formatting.
                open = tx.blocking_send(Bytes::from(piece)).is_ok();
            }
            open
        });
        if open {
            out.push('}');
            let _ = tx.blocking_send(Bytes::from(out));
        }
    });
    (
        StatusCode::OK,
        headers,
        axum::body::Body::new(ChannelBody(rx)),
    )
        .into_response()
}

/// A response body fed by a channel of pieces; ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// About how many bytes a result's JSON takes, to allocate the body once.
fn estimated_len(v: &Value) -> usize {
    let labels = |l: &Labels| {
        l.iter()
            .map(|l| l.name.len() + l.value.len() + 6)
            .sum::<usize>()
            + 2
    };
    match v {
        Value::Matrix(series) => series
            .iter()
            .map(|s| labels(&s.labels) + 24 + s.samples.len() * 28)
            .sum(),
        Value::Vector(samples) => samples.iter().map(|s| labels(&s.labels) + 48).sum(),
        _ => 64,
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Request parameters from the URL query and, for POST, the form body; repeated keys kept.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(raw: Option<String>, headers: &HeaderMap, body: &Bytes) -> Self {
        let mut pairs = raw.as_deref().map(parse_urlencoded).unwrap_or_default();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form && let Ok(s) = std::str::from_utf8(body) {
            pairs.extend(parse_urlencoded(s));
        }
        Self(pairs)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, key: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(v) => parse_time(v).ok_or_else(|| {
                ApiError::bad_data(format!(
                    "invalid parameter \"{key}\": cannot parse \"{v}\" to a valid timestamp"
                ))
            }),
        }
    }

    fn duration(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => parse_duration(v).map(Some).ok_or_else(|| {
                ApiError::bad_data(format!(
                    "invalid parameter \"{key}\": cannot parse \"{v}\" to a valid duration"
                ))
            }),
        }
    }
}

/// Splits `a=1&b=2` into decoded pairs (`+` is a space, `%XX` a byte).
fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prometheus' time parameter: float Unix seconds or RFC 3339; returns milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(f) = s.parse::<f64>() {
        // Beyond ±9.2e15 s the milliseconds overflow i64.
        if !f.is_finite() || f.abs() > 9.2e15 {
            return None;
        }
        let secs = f.trunc();
        let ms = ((f - secs) * 1000.0).round();
        return Some(secs as i64 * 1000 + ms as i64);
    }
    parse_rfc3339(s)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to milliseconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let padded: String = frac.chars().chain("000".chars()).take(3).collect();
        ms = padded.parse().ok()?;
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if c == b'+' { o } else { -o }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from civil (proleptic Gregorian).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_s) * 1000 + ms)
}

/// Prometheus' duration parameter: float seconds or `1h30m`-style; returns milliseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms.abs() > 9.2e18 {
            return None;
        }
        return Some(ms as i64);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

fn tenant(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    if !state.multitenancy {
        return Ok(ANONYMOUS.into());
    }
    match headers
        .get("X-Scope-OrgID")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some(t) if t.contains('|') => Err(ApiError::bad_data(format!(
            "tenant federation ({t:?}) is not supported: query one tenant per request"
        ))),
        Some(t) if !t.is_empty() => match validate_tenant(t) {
            Ok(()) => Ok(t.to_string()),
            Err(m) => Err(ApiError::bad_data(m)),
        },
        _ => Err(ApiError {
            kind: "bad_data",
            status: StatusCode::UNAUTHORIZED,
            message: "no org id".into(),
        }),
    }
}

/// The engine for one request: the request's `timeout` may only shorten the configured one.
fn engine_for(state: &ApiState, p: &Params) -> Result<Engine, ApiError> {
    let mut engine = state.engine.clone();
    if let Some(ms) = p.duration("timeout")?
        && ms > 0
    {
        let d = Duration::from_millis(ms as u64);
        if d < engine.limits.timeout {
            engine.limits.timeout = d;
        }
    }
    Ok(engine)
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError {
            kind: "internal",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("query evaluation task failed: {e}"),
        })?
        .map_err(ApiError::from)
}

async fn query(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(raw, &headers, &body);
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let t = p.time("time", rimir_promql::now_ms())?;
        let q = p.get("query").unwrap_or("").to_string();
        let engine = engine_for(&state, &p)?;
        let source = state.tenants.queryable(&tenant);
        let v = run_blocking(move || engine.instant(source.as_ref(), &q, t)).await?;
        Ok::<_, ApiError>(success_result(v))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn query_range(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(raw, &headers, &body);
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let start = required_time(&p, "start")?;
        let end = required_time(&p, "end")?;
        if end < start {
            return Err(ApiError::bad_data(
                "end timestamp must not be before start time",
            ));
        }
        let step = p
            .duration("step")?
            .ok_or_else(|| ApiError::bad_data("invalid parameter \"step\": cannot parse \"\" to a valid duration"))?;
        if step <= 0 {
            return Err(ApiError::bad_data(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if (end - start) / step > MAX_POINTS_PER_SERIES {
            return Err(ApiError::bad_data(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        let q = p.get("query").unwrap_or("").to_string();
        let engine = engine_for(&state, &p)?;
        let source = state.tenants.queryable(&tenant);
        let v = run_blocking(move || engine.range(source.as_ref(), &q, start, end, step)).await?;
        Ok::<_, ApiError>(success_result(v))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn required_time(p: &Params, key: &str) -> Result<i64, ApiError> {
    match p.get(key) {
        Some(v) if !v.is_empty() => p.time(key, 0),
        _ => Err(ApiError::bad_data(format!(
            "invalid parameter \"{key}\": cannot parse \"\" to a valid timestamp"
        ))),
    }
}

/// Parses each `match[]` selector into matchers.
fn match_params(p: &Params) -> Result<Vec<Vec<Matcher>>, ApiError> {
    p.all("match[]")
        .into_iter()
        .map(|m| {
            let expr = rimir_promql::parse(m).map_err(ApiError::from)?;
            match expr {
                Expr::VectorSelector(vs) => {
                    rimir_promql::selector_matchers(&vs).map_err(ApiError::from)
                }
                _ => Err(ApiError::bad_data(format!(
                    "invalid parameter \"match[]\": {m} is not a vector selector"
                ))),
            }
        })
        .collect()
}

async fn series(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(raw, &headers, &body);
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let sets = match_params(&p)?;
        if sets.is_empty() {
            return Err(ApiError::bad_data("no match[] parameter provided"));
        }
        let (start, end) = (p.time("start", MIN_TIME)?, p.time("end", MAX_TIME)?);
        let source = state.tenants.queryable(&tenant);
        let limit = state.engine.limits.max_fetched_series;
        let found = run_blocking(move || {
            let mut all: BTreeSet<Labels> = BTreeSet::new();
            for m in &sets {
                for labels in source.series(m, start, end)? {
                    all.insert(labels);
                    if limit > 0 && all.len() > limit {
                        return Err(QueryError::TooManySeries { limit });
                    }
                }
            }
            Ok(all)
        })
        .await?;
        let mut out = String::from("[");
        for (i, l) in found.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_labels(&mut out, l);
        }
        out.push(']');
        Ok::<_, ApiError>(success(&out))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn labels(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::new(raw, &headers, &body);
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let sets = match_params(&p)?;
        let (start, end) = (p.time("start", MIN_TIME)?, p.time("end", MAX_TIME)?);
        let source = state.tenants.queryable(&tenant);
        let names = run_blocking(move || {
            if sets.is_empty() {
                return source.label_names(&[], start, end);
            }
            let mut all = BTreeSet::new();
            for m in &sets {
                all.extend(source.label_names(m, start, end)?);
            }
            Ok(all.into_iter().collect())
        })
        .await?;
        Ok::<_, ApiError>(success(&string_list(&names)))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn label_values(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = Params::new(raw, &headers, &Bytes::new());
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
        }
        let sets = match_params(&p)?;
        let (start, end) = (p.time("start", MIN_TIME)?, p.time("end", MAX_TIME)?);
        let source = state.tenants.queryable(&tenant);
        let values = run_blocking(move || {
            if sets.is_empty() {
                return source.label_values(&name, &[], start, end);
            }
            let mut all = BTreeSet::new();
            for m in &sets {
                all.extend(source.label_values(&name, m, start, end)?);
            }
            Ok(all.into_iter().collect())
        })
        .await?;
        Ok::<_, ApiError>(success(&string_list(&values)))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /api/v1/metadata`: the metric metadata the tenant's Prometheus servers remote-wrote
/// (`metric` selects one metric, `limit` caps the number of metrics, `limit_per_metric` the
/// entries of each; negative means no limit, as in Prometheus).
async fn metadata(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = Params::new(raw, &headers, &Bytes::new());
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let count = |key: &str| -> Result<Option<usize>, ApiError> {
            match p.get(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| ApiError::bad_data(format!("{key} must be a number")))?;
                    Ok(usize::try_from(n).ok())
                }
            }
        };
        let (limit, per_metric) = (count("limit")?, count("limit_per_metric")?);
        let metric = p.get("metric").filter(|m| !m.is_empty()).map(String::from);
        let source = state.tenants.queryable(&tenant);
        let all = run_blocking(move || source.metadata(metric.as_deref())).await?;
        let merged = rimir_core::metadata::merge(all, limit, per_metric);
        let mut out = String::from("{");
        for (i, (name, entries)) in merged.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_str(name));
            out.push_str(":[");
            for (j, m) in entries.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&format!(
                    "{{\"type\":\"{}\",\"help\":{},\"unit\":{}}}",
                    rimir_core::metadata::type_name(m.kind),
                    json_str(&m.help),
                    json_str(&m.unit)
                ));
            }
            out.push(']');
        }
        out.push('}');
        Ok::<_, ApiError>(success(&out))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn buildinfo() -> Response {
    success(&format!(
        "{{\"version\":\"2.42.0\",\"revision\":\"rimir-{}\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\"}}",
        env!("CARGO_PKG_VERSION")
    ))
}

fn string_list(v: &[String]) -> String {
    let mut out = String::from("[");
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(s));
    }
    out.push(']');
    out
}

fn write_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, lb) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(&lb.name));
        out.push(':');
        out.push_str(&json_str(&lb.value));
    }
    out.push('}');
}

fn write_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    rimir_promql::write_timestamp(out, t);
    out.push_str(",\"");
    // Whole numbers below 2^53 (counters, most gauges) print exactly as their integer; -0
    // keeps its sign through the float path, as Go prints it.
    if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 && v.to_bits() != (-0.0f64).to_bits() {
        if v < 0.0 {
            out.push('-');
        }
        rimir_promql::write_u64(out, v.abs() as u64);
    } else if v.is_finite() && (v == 0.0 || (1e-6..1e21).contains(&v.abs())) {
        let _ = write!(out, "{v}");
    } else {
        out.push_str(&rimir_promql::format_value(v));
    }
    out.push_str("\"]");
}

/// The `data` object of a query result.
pub fn format_result(v: &Value) -> String {
    let mut out = String::new();
    write_result(&mut out, v);
    out
}

/// Appends the `data` object of a query result to `out`.
fn write_result(out: &mut String, v: &Value) {
    write_result_with(out, v, |_| true);
}

/// [`write_result`], calling `flushed` after each series or sample with the text so far (which
/// it may drain); stops early when it returns `false`.
fn write_result_with(out: &mut String, v: &Value, mut flushed: impl FnMut(&mut String) -> bool) {
    match v {
        Value::Scalar { t, v } => {
            out.push_str("{\"resultType\":\"scalar\",\"result\":");
            write_point(out, *t, *v);
        }
        Value::String { t, s } => {
            let _ = write!(
                out,
                "{{\"resultType\":\"string\",\"result\":[{},{}]",
                rimir_promql::format_timestamp(*t),
                json_str(s)
            );
        }
        Value::Vector(samples) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
                out.push_str(",\"value\":");
                write_point(out, s.t, s.v);
                out.push('}');
                if !flushed(out) {
                    return;
                }
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, &(t, v)) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(out, t, v);
                }
                out.push_str("]}");
                if !flushed(out) {
                    return;
                }
            }
            out.push(']');
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::querier::TenantMap;
    use rimir_promql::{MemQueryable, Queryable};

    #[test]
    fn whole_numbers_print_as_go_prints_them() {
        let point = |v: f64| {
            let mut out = String::new();
            write_point(&mut out, 1_500, v);
            out
        };
        let cases: [f64; 11] = [
            0.0,
            1.0,
            -1.0,
            12_345.0,
            -987_654_321.0,
            1e15,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            0.5,
            -2.25,
            1e-7,
        ];
        for v in cases {
            let want = if v.abs() < 1e21 && (v == 0.0 || v.abs() >= 1e-6) {
                format!("{v}")
            } else {
                rimir_promql::format_value(v)
            };
            assert_eq!(point(v), format!("[1.500,\"{want}\"]"), "value {v:e}");
        }
        assert_eq!(point(-0.0), "[1.500,\"-0\"]");
        assert_eq!(point(f64::NAN), "[1.500,\"NaN\"]");
        assert_eq!(point(f64::INFINITY), "[1.500,\"+Inf\"]");
        let mut t = String::new();
        rimir_promql::write_timestamp(&mut t, -1_234_005);
        assert_eq!(t, "-1234.005");
        for n in (0..2_000u64).chain([99_999, 100_000, 1_764_072_000, u64::MAX]) {
            let mut s = String::new();
            rimir_promql::write_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
    use rimir_core::remote_write::MetricMetadata;
    use rimir_tsdb::series::Series;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tenant_data(job: &str) -> Arc<dyn Queryable> {
        let md = |kind: i32, name: &str, help: &str| MetricMetadata {
            r#type: kind,
            metric_family_name: name.into(),
            help: help.into(),
            unit: String::new(),
        };
        Arc::new(
            MemQueryable::new(vec![Series {
                labels: Labels::from_pairs([("__name__", "up"), ("job", job)]),
                samples: (0..10).map(|i| (i * 15_000, i as f64)).collect(),
            }])
            .with_metadata(vec![
                md(1, &format!("{job}_requests_total"), "Requests \"served\"."),
                md(2, "shared_gauge", "A gauge."),
                md(2, "shared_gauge", "A gauge."),
                md(0, "shared_gauge", "Older help."),
            ]),
        )
    }

    async fn serve(state: ApiState) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router(state)).await.unwrap();
        });
        addr
    }

    /// Sends one HTTP/1.1 request; returns status and body.
    async fn request(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        tenant: Option<&str>,
        form: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(t) = tenant {
            req.push_str(&format!("X-Scope-OrgID: {t}\r\n"));
        }
        let body = form.unwrap_or("");
        if form.is_some() {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        let text = String::from_utf8(resp).unwrap();
        let status: u16 = text[9..12].parse().unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, serde_json::from_str(&body).unwrap())
    }

    /// The payload of an HTTP/1.1 chunked body.
    fn dechunk(mut body: &str) -> String {
        let mut out = String::new();
        loop {
            let (size, rest) = body.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                return out;
            }
            out.push_str(&rest[..n]);
            body = &rest[n + 2..];
        }
    }

    #[tokio::test]
    async fn large_results_stream_the_same_json_in_pieces() {
        // 400 series x 241 points: several MiB of JSON, above the streaming threshold.
        let series: Vec<Series> = (0..400)
            .map(|i| Series {
                labels: Labels::from_pairs([
                    ("__name__", "big".to_string()),
                    ("instance", format!("host-{i:04}")),
                ]),
                samples: (0..=240)
                    .map(|k| (k * 15_000, (i * k) as f64 + 0.25))
                    .collect(),
            })
            .collect();
        let source: Arc<dyn Queryable> = Arc::new(MemQueryable::new(series));
        let mut tenants = TenantMap::default();
        tenants.tenants.insert(ANONYMOUS.into(), source.clone());
        let addr = serve(ApiState {
            tenants: Arc::new(tenants),
            engine: Engine::default(),
            multitenancy: false,
        })
        .await;
        let want = Engine::default()
            .range(source.as_ref(), "big", 0, 3_600_000, 15_000)
            .unwrap();
        assert!(
            estimated_len(&want) > 2 * STREAM_CHUNK,
            "result too small to stream"
        );
        let want: serde_json::Value = serde_json::from_str(&format!(
            "{{\"status\":\"success\",\"data\":{}}}",
            format_result(&want)
        ))
        .unwrap();
        let (code, got) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query_range?query=big&start=0&end=3600&step=15",
            None,
            None,
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(got["data"]["result"].as_array().map(Vec::len), Some(400));
        assert_eq!(got, want);
    }

    fn state(multitenancy: bool) -> ApiState {
        let mut tenants = TenantMap::default();
        tenants.tenants.insert("a".into(), tenant_data("job-a"));
        tenants.tenants.insert("b".into(), tenant_data("job-b"));
        tenants
            .tenants
            .insert(ANONYMOUS.into(), tenant_data("anon"));
        ApiState {
            tenants: Arc::new(tenants),
            engine: Engine::default(),
            multitenancy,
        }
    }

    #[tokio::test]
    async fn invalid_and_federated_tenant_ids_are_bad_data_naming_the_rule() {
        let addr = serve(state(true)).await;
        for (org, says) in [
            ("../x", "contains unsupported character '/'"),
            ("team a", "contains unsupported character ' '"),
            ("..", "is not allowed"),
            ("a|b", "tenant federation"),
        ] {
            let (code, v) = request(
                addr,
                "GET",
                "/prometheus/api/v1/query?query=up",
                Some(org),
                None,
            )
            .await;
            assert_eq!(code, 400, "{org}: {v}");
            assert_eq!(v["errorType"], "bad_data", "{org}: {v}");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(msg.contains(says), "{org}: {msg}");
        }
        let (code, _) = request(addr, "GET", "/prometheus/api/v1/labels", Some("a"), None).await;
        assert_eq!(code, 200);
    }

    #[tokio::test]
    async fn query_and_query_range_return_prometheus_json() {
        let addr = serve(state(true)).await;
        let (code, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query?query=up&time=60",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(
            v,
            serde_json::json!({"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"__name__":"up","job":"job-a"},"value":[60,"4"]}]}})
        );
        let (code, v) = request(
            addr,
            "POST",
            "/prometheus/api/v1/query_range",
            Some("a"),
            Some("query=up%20*%202&start=0&end=30&step=15s"),
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(
            v,
            serde_json::json!({"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"job":"job-a"},"values":[[0,"0"],[15,"2"],[30,"4"]]}]}})
        );
        let (_, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query?query=1%2F0&time=1.5",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(
            v["data"],
            serde_json::json!({"resultType":"scalar","result":[1.5,"+Inf"]})
        );
    }

    #[tokio::test]
    async fn bad_promql_is_bad_data_with_position() {
        let addr = serve(state(true)).await;
        let (code, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query?query=foo%20bar",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert_eq!(v["errorType"], "bad_data");
        assert!(
            v["error"].as_str().unwrap().starts_with("1:5: parse error"),
            "{v}"
        );
        let (code, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query_range?query=up&start=10&end=0&step=1",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert_eq!(v["error"], "end timestamp must not be before start time");
        let (code, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query?query=up&time=yesterday",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert!(v["error"].as_str().unwrap().contains("\"time\""), "{v}");
    }

    #[tokio::test]
    async fn limits_answer_422_naming_the_limit() {
        let mut st = state(true);
        st.engine.limits.max_samples = 2;
        let addr = serve(st).await;
        let (code, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query?query=sum_over_time(up%5B5m%5D)&time=150",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(code, 422);
        assert_eq!(v["errorType"], "execution");
        assert!(v["error"].as_str().unwrap().contains("max_samples"), "{v}");
        let mut st = state(true);
        st.engine.limits.max_fetched_series = 1;
        let mut tenants = TenantMap::default();
        tenants.tenants.insert(
            "a".into(),
            Arc::new(MemQueryable::new(vec![
                Series {
                    labels: Labels::from_pairs([("__name__", "up"), ("i", "1")]),
                    samples: vec![(0, 1.0)],
                },
                Series {
                    labels: Labels::from_pairs([("__name__", "up"), ("i", "2")]),
                    samples: vec![(0, 1.0)],
                },
            ])),
        );
        st.tenants = Arc::new(tenants);
        let addr = serve(st).await;
        let (code, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query?query=up&time=1",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(code, 422);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("max_fetched_series_per_query"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn tenants_never_see_each_others_series() {
        let addr = serve(state(true)).await;
        for (t, own, other) in [("a", "job-a", "job-b"), ("b", "job-b", "job-a")] {
            let paths = [
                "/prometheus/api/v1/query?query=up&time=60".to_string(),
                "/prometheus/api/v1/query_range?query=up&start=0&end=60&step=15".to_string(),
                "/prometheus/api/v1/series?match[]=up".to_string(),
                "/prometheus/api/v1/label/job/values".to_string(),
            ];
            for p in paths {
                let (code, v) = request(addr, "GET", &p, Some(t), None).await;
                assert_eq!(code, 200, "{p}: {v}");
                let text = v.to_string();
                assert!(text.contains(own), "{p}: {text}");
                assert!(!text.contains(other), "{p}: {text}");
            }
        }
        let (code, _) = request(addr, "GET", "/prometheus/api/v1/query?query=up", None, None).await;
        assert_eq!(code, 401);
        let addr = serve(state(false)).await;
        let (_, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/label/job/values",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(v["data"], serde_json::json!(["anon"]));
    }

    #[tokio::test]
    async fn metadata_routes_answer() {
        let addr = serve(state(true)).await;
        let (code, v) = request(addr, "GET", "/prometheus/api/v1/series", Some("a"), None).await;
        assert_eq!(code, 400);
        assert_eq!(v["error"], "no match[] parameter provided");
        let (_, v) = request(
            addr,
            "POST",
            "/prometheus/api/v1/labels",
            Some("a"),
            Some("match%5B%5D=up"),
        )
        .await;
        assert_eq!(v["data"], serde_json::json!(["__name__", "job"]));
        let (_, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/status/buildinfo",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(v["data"]["version"], "2.42.0");
        let (code, v) = request(addr, "GET", "/prometheus/api/v1/metadata", Some("a"), None).await;
        assert_eq!(code, 200);
        // Tenant a's metadata only, replicas' duplicates merged, Prometheus' type names.
        assert_eq!(
            v["data"],
            serde_json::json!({
                "job-a_requests_total": [{"type": "counter", "help": "Requests \"served\".", "unit": ""}],
                "shared_gauge": [
                    {"type": "unknown", "help": "Older help.", "unit": ""},
                    {"type": "gauge", "help": "A gauge.", "unit": ""}
                ]
            })
        );
        let get = |q: &'static str| request(addr, "GET", q, Some("b"), None);
        let (_, v) =
            get("/prometheus/api/v1/metadata?metric=shared_gauge&limit_per_metric=1").await;
        assert_eq!(v["data"].as_object().unwrap().len(), 1);
        assert_eq!(v["data"]["shared_gauge"].as_array().unwrap().len(), 1);
        let (_, v) = get("/prometheus/api/v1/metadata?limit=1").await;
        assert_eq!(
            v["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["job-b_requests_total"]
        );
        let (_, v) = get("/prometheus/api/v1/metadata?limit=0").await;
        assert_eq!(v["data"], serde_json::json!({}));
        let (_, v) = get("/prometheus/api/v1/metadata?limit=-1").await;
        assert_eq!(v["data"].as_object().unwrap().len(), 2);
        let (code, v) = get("/prometheus/api/v1/metadata?limit=lots").await;
        assert_eq!((code, v["errorType"].as_str()), (400, Some("bad_data")));
        assert_eq!(v["error"], "limit must be a number");
    }

    /// Runs `promtool query …` against the router; returns (success, stdout + stderr).
    async fn promtool(args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new("promtool")
            .arg("query")
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run promtool (is Prometheus 2.42's promtool installed?)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn promtool_query_works_against_the_api() {
        let addr = serve(state(false)).await;
        let url = format!("http://{addr}/prometheus");
        let (ok, out) = promtool(&["instant", "--time=60", &url, "up * 2"]).await;
        assert!(ok, "{out}");
        assert!(out.contains("{job=\"anon\"} => 8 @[60]"), "{out}");
        let (ok, out) =
            promtool(&["range", "--start=0", "--end=30", "--step=15s", &url, "up"]).await;
        assert!(ok, "{out}");
        assert!(out.contains("0 @[0]") && out.contains("2 @[30]"), "{out}");
        let (ok, out) = promtool(&["series", "--match=up", "--start=0", "--end=200", &url]).await;
        assert!(ok, "{out}");
        assert!(out.contains("job=\"anon\""), "{out}");
        let (ok, out) = promtool(&["labels", "--start=0", "--end=200", &url, "job"]).await;
        assert!(ok, "{out}");
        assert_eq!(out.trim(), "anon");
        let (ok, out) = promtool(&["instant", &url, "up{"]).await;
        assert!(!ok && out.contains("bad_data"), "{out}");
    }

    #[tokio::test]
    async fn timeouts_answer_503() {
        let mut st = state(true);
        st.engine.limits.timeout = Duration::ZERO;
        let addr = serve(st).await;
        let (code, v) = request(
            addr,
            "GET",
            "/prometheus/api/v1/query_range?query=up&start=0&end=60&step=1",
            Some("a"),
            None,
        )
        .await;
        assert_eq!(code, 503, "{v}");
        assert_eq!(v["errorType"], "timeout");
        assert!(v["error"].as_str().unwrap().contains("timeout"), "{v}");
    }

    #[test]
    fn times_and_durations_parse_like_prometheus() {
        assert_eq!(parse_time("1.5"), Some(1500));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Some(1_435_781_451_781)
        );
        assert_eq!(
            parse_time("2015-07-01T22:10:51+02:00"),
            Some(1_435_781_451_000)
        );
        assert_eq!(parse_time("nope"), None);
        assert_eq!(parse_time("1e300"), None);
        assert_eq!(parse_duration("15s"), Some(15_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("0.5"), Some(500));
        assert_eq!(parse_duration("5x"), None);
    }
}
