//! `GET /metrics`: what a service did, as Prometheus text (format 0.0.4).
//!
//! Per tool: calls, errors by error code, a latency histogram. Per resource
//! pattern and mode (`read`, `stream`): the same; per pattern, the streams
//! open now. Then the connections open now, and whatever text the service
//! added with [`ServiceBuilder::extra_metrics`](crate::ServiceBuilder::extra_metrics)
//! (cognition appends its memory client's metrics there).
//!
//! # Bounded labels
//! A label value is a registered tool name, a registered resource pattern
//! (`history/{user_id}`, never the URI asked for), a mode, or an
//! [`ErrorCode`]'s wire name. A call to a tool that does not exist is
//! counted under `tool="_unknown"`, a URI no pattern matches under
//! `pattern="_unknown"`. So the series are fixed when the service is built,
//! whatever callers send: no user id, URI or content ever reaches a label.
//!
//! # No lock on the hot path
//! Every series of a registered tool or pattern is created at build time and
//! its handles kept beside the handler, so a call increments atomics and
//! nothing else: no map lookup, no lock. An error code's counter is created
//! on its first use ([`OnceLock`]), and read lock-free after that.
//!
//! # Bounded in time and size
//! Rendering reads atomics and formats a few hundred lines; it never waits
//! on I/O. Each extra source's text is cut off past [`MAX_EXTRA_BYTES`].
//!
//! The endpoint is unauthenticated, like every route today, and holds
//! operational counts only.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use cortex_proto::ErrorCode;
use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ServiceError;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

pub use cortex_proto::metrics::{LATENCY_BUCKETS, LatencyHistogram};

/// The most text one extra source may add to `/metrics`; past it the rest
/// of its text is dropped, at a line boundary, with a comment saying so.
pub const MAX_EXTRA_BYTES: usize = 1024 * 1024;

/// The label value of calls to no registered tool or pattern.
pub const UNKNOWN: &str = "_unknown";

/// Every code an error counter may carry, in a fixed order (the index of a
/// code's counter); a code this version does not know counts as `other`.
const CODES: [ErrorCode; 10] = [
    ErrorCode::InvalidRequest,
    ErrorCode::InvalidArguments,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::ToolNotFound,
    ErrorCode::ResourceNotFound,
    ErrorCode::PayloadTooLarge,
    ErrorCode::ToolExecutionError,
    ErrorCode::Unavailable,
    ErrorCode::Other,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolErrorLabels {
    tool: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    pattern: String,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceErrorLabels {
    pattern: String,
    mode: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PatternLabels {
    pattern: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    service: String,
    version: String,
}

/// Text appended to `/metrics` on every scrape.
pub(crate) type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// The metrics of one service: its families, and the handles of the series
/// every registered tool and pattern owns.
pub(crate) struct ServiceMetrics {
    /// Written once at build; only read (encoded) afterwards, so it needs
    /// no lock.
    registry: Registry,
    tool_calls: Family<ToolLabels, Counter>,
    tool_errors: Family<ToolErrorLabels, Counter>,
    tool_latency: Family<ToolLabels, LatencyHistogram>,
    resource_requests: Family<ResourceLabels, Counter>,
    resource_errors: Family<ResourceErrorLabels, Counter>,
    resource_latency: Family<ResourceLabels, LatencyHistogram>,
    open_streams: Family<PatternLabels, Gauge>,
    pub(crate) open_connections: Gauge,
    /// One series per certificate file served (one at most today).
    tls_expiry: Family<CertificateLabels, Gauge>,
    pub(crate) unknown_tool: OperationMetrics,
    pub(crate) unknown_read: OperationMetrics,
    pub(crate) unknown_stream: OperationMetrics,
    extra: Vec<ExtraMetrics>,
}

impl ServiceMetrics {
    pub(crate) fn new(service: &str, version: &str, extra: Vec<ExtraMetrics>) -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            tool_calls: Family::default(),
            tool_errors: Family::default(),
            tool_latency: Family::default(),
            resource_requests: Family::default(),
            resource_errors: Family::default(),
            resource_latency: Family::default(),
            open_streams: Family::default(),
            open_connections: Gauge::default(),
            tls_expiry: Family::default(),
            unknown_tool: OperationMetrics::default(),
            unknown_read: OperationMetrics::default(),
            unknown_stream: OperationMetrics::default(),
            extra,
        };
        let info: Family<InfoLabels, Gauge> = Family::default();
        info.get_or_create(&InfoLabels {
            service: service.into(),
            version: version.into(),
        })
        .set(1);
        let r = &mut metrics.registry;
        r.register(
            "cortex_service_info",
            "The service's name and version (always 1)",
            info,
        );
        r.register(
            "cortex_service_tool_calls",
            "Tool calls, per registered tool (`_unknown`: no such tool)",
            metrics.tool_calls.clone(),
        );
        r.register(
            "cortex_service_tool_errors",
            "Failed tool calls, per tool and error code",
            metrics.tool_errors.clone(),
        );
        r.register(
            "cortex_service_tool_duration_seconds",
            "Time to answer a tool call",
            metrics.tool_latency.clone(),
        );
        r.register(
            "cortex_service_resource_requests",
            "Resource reads and stream opens, per registered pattern (`_unknown`: none matched) and mode",
            metrics.resource_requests.clone(),
        );
        r.register(
            "cortex_service_resource_errors",
            "Failed resource reads and stream opens, per pattern, mode and error code",
            metrics.resource_errors.clone(),
        );
        r.register(
            "cortex_service_resource_duration_seconds",
            "Time to answer a read, or to open a stream",
            metrics.resource_latency.clone(),
        );
        r.register(
            "cortex_service_open_streams",
            "Resource streams open now, per pattern",
            metrics.open_streams.clone(),
        );
        r.register(
            "cortex_service_open_connections",
            "TCP connections open now",
            metrics.open_connections.clone(),
        );
        r.register(
            "cortex_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the served TLS chain's first certificate to expire does, per certificate file",
            metrics.tls_expiry.clone(),
        );
        metrics.unknown_tool = metrics.tool(UNKNOWN);
        metrics.unknown_read = metrics.resource(UNKNOWN, "read");
        metrics.unknown_stream = metrics.resource(UNKNOWN, "stream");
        metrics
    }

    /// The expiry gauge of the certificate file at `path`, created now.
    pub(crate) fn tls_expiry(&self, path: &std::path::Path) -> Gauge {
        self.tls_expiry
            .get_or_create(&CertificateLabels {
                certificate: path.display().to_string(),
            })
            .clone()
    }

    /// The series of tool `name`, created now so that it shows (at zero)
    /// before the first call.
    pub(crate) fn tool(&self, name: &str) -> OperationMetrics {
        let labels = ToolLabels { tool: name.into() };
        let family = self.tool_errors.clone();
        let tool = name.to_string();
        OperationMetrics {
            inner: Arc::new(OperationInner {
                calls: self.tool_calls.get_or_create_owned(&labels),
                latency: self.tool_latency.get_or_create_owned(&labels),
                errors: Default::default(),
                new_error: Box::new(move |code| {
                    family.get_or_create_owned(&ToolErrorLabels {
                        tool: tool.clone(),
                        code,
                    })
                }),
                open: None,
            }),
        }
    }

    /// The series of resource `pattern` in `mode` (`read` or `stream`).
    pub(crate) fn resource(&self, pattern: &str, mode: &'static str) -> OperationMetrics {
        let labels = ResourceLabels {
            pattern: pattern.into(),
            mode,
        };
        let family = self.resource_errors.clone();
        let owned = pattern.to_string();
        let open = (mode == "stream").then(|| {
            self.open_streams.get_or_create_owned(&PatternLabels {
                pattern: pattern.into(),
            })
        });
        OperationMetrics {
            inner: Arc::new(OperationInner {
                calls: self.resource_requests.get_or_create_owned(&labels),
                latency: self.resource_latency.get_or_create_owned(&labels),
                errors: Default::default(),
                new_error: Box::new(move |code| {
                    family.get_or_create_owned(&ResourceErrorLabels {
                        pattern: owned.clone(),
                        mode,
                        code,
                    })
                }),
                open,
            }),
        }
    }

    /// The exposition: the kit's families, then each extra source's text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(%error, "could not encode the service's metrics");
        }
        for extra in &self.extra {
            let mut text = extra();
            if text.len() > MAX_EXTRA_BYTES {
                let cut = text[..MAX_EXTRA_BYTES].rfind('\n').map_or(0, |i| i + 1);
                text.truncate(cut);
                text.push_str(
                    "# cortex: the rest of this source was dropped (over the size limit)\n",
                );
            }
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            out.push_str(&text);
        }
        out
    }
}

/// The handles of one tool's, or one pattern-and-mode's, series.
#[derive(Clone, Default)]
pub(crate) struct OperationMetrics {
    inner: Arc<OperationInner>,
}

struct OperationInner {
    calls: Counter,
    latency: LatencyHistogram,
    /// One counter per entry of [`CODES`], made on the code's first error.
    errors: [OnceLock<Counter>; CODES.len()],
    new_error: Box<dyn Fn(&'static str) -> Counter + Send + Sync>,
    /// Streams open now (stream mode only).
    open: Option<Gauge>,
}

impl Default for OperationInner {
    /// Series registered nowhere: what a handle is before
    /// [`ServiceMetrics::new`] gives it its own.
    fn default() -> Self {
        Self {
            calls: Counter::default(),
            latency: LatencyHistogram::default(),
            errors: Default::default(),
            new_error: Box::new(|_| Counter::default()),
            open: None,
        }
    }
}

impl OperationMetrics {
    /// Starts timing a call; the call is counted when the guard drops, so a
    /// call whose caller went away is counted too (without an error code).
    pub(crate) fn start(&self) -> CallTimer<'_> {
        CallTimer {
            metrics: self,
            started: tokio::time::Instant::now(),
            error: None,
        }
    }

    fn error(&self, code: &ErrorCode) {
        let index = CODES
            .iter()
            .position(|c| c == code)
            .unwrap_or(CODES.len() - 1);
        self.inner.errors[index]
            .get_or_init(|| (self.inner.new_error)(CODES[index].as_str()))
            .inc();
    }

    /// `events`, counted as an open stream until it is dropped.
    pub(crate) fn count_open<S>(&self, events: S) -> OpenStream<S> {
        let open = self.inner.open.clone();
        if let Some(gauge) = &open {
            gauge.inc();
        }
        OpenStream { events, open }
    }
}

/// Counts one call when dropped: its latency, and its error code if it
/// failed.
pub(crate) struct CallTimer<'a> {
    metrics: &'a OperationMetrics,
    started: tokio::time::Instant,
    error: Option<ErrorCode>,
}

impl CallTimer<'_> {
    /// Notes the outcome; returns it unchanged.
    pub(crate) fn outcome<T>(mut self, result: Result<T, ServiceError>) -> Result<T, ServiceError> {
        if let Err(error) = &result {
            self.error = Some(error.code.clone());
        }
        result
    }
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        let inner = &self.metrics.inner;
        inner.calls.inc();
        inner.latency.observe(self.started.elapsed());
        if let Some(code) = &self.error {
            self.metrics.error(code);
        }
    }
}

/// A stream that lowers its pattern's open-streams gauge when dropped.
/// Generic over the stream, so that metrics need not know the registry's
/// stream type (and the registry can box it).
pub(crate) struct OpenStream<S> {
    events: S,
    open: Option<Gauge>,
}

impl<S: Stream + Unpin> Stream for OpenStream<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

impl<S> Drop for OpenStream<S> {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

/// A listener whose connections are counted while they are open.
pub(crate) struct CountedListener<L> {
    pub(crate) listener: L,
    pub(crate) open: Gauge,
}

impl<L: axum::serve::Listener> axum::serve::Listener for CountedListener<L> {
    type Io = CountedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.listener.accept().await;
        self.open.inc();
        let open = self.open.clone();
        (CountedIo { io, open }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection that lowers the open-connections gauge when dropped.
pub(crate) struct CountedIo<T> {
    io: T,
    open: Gauge,
}

impl<T> Drop for CountedIo<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_unknown_code_counts_as_other() {
        let metrics = ServiceMetrics::new("s", "1", Vec::new());
        let tool = metrics.tool("t");
        drop(
            tool.start()
                .outcome::<()>(Err(ServiceError::new(ErrorCode::Other, "x"))),
        );
        let text = metrics.render();
        assert!(
            text.contains("cortex_service_tool_errors_total{tool=\"t\",code=\"other\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn extra_text_is_bounded() {
        let line = "x_total 1\n";
        let big = line.repeat(MAX_EXTRA_BYTES / line.len() + 10);
        let metrics = ServiceMetrics::new("s", "1", vec![Arc::new(move || big.clone())]);
        let text = metrics.render();
        assert!(text.len() <= MAX_EXTRA_BYTES + 64_000, "{}", text.len());
        assert!(text.ends_with("(over the size limit)\n"));
        assert!(text.lines().all(|l| l.starts_with('#') || l.contains(' ')));
    }
}
