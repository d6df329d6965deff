//! `/metrics` over HTTP, shared by `fpn-gms serve` and `fpn-node up`.
//!
//! Both daemons already keep their counters for `status` (atomics in the
//! carriers and the relay, plain integers in the node core and the GMS
//! core). Nothing here counts anything: at scrape time the daemon reads
//! those counters once, writes them into an [`Exposition`] and the
//! prometheus-client text encoder turns that into the OpenMetrics text that
//! Prometheus scrapes. So the packet paths pay nothing for metrics (no lock,
//! no allocation, no second counter), and a scrape costs one `status`.
//!
//! The endpoint is off unless a `[metrics] listen` address is configured;
//! it has no authentication, so it belongs on loopback or a private
//! address (docs/NODE.md, docs/GMS.md).

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;
use tracing::{debug, warn};

use crate::{Error, Result};

/// The content type of prometheus-client's text encoding (it ends with
/// `# EOF`, which is OpenMetrics, and Prometheus asks for it first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Produces the page for one scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// A bound `/metrics` listener, not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (TCP) now, so a bad address fails the daemon's start
    /// with [`Error::MetricsBind`] instead of a log line later.
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let bind_err = |source| Error::MetricsBind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self { listener, addr })
    }

    /// The address bound (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` with `render` until the task is aborted. Must
    /// run inside a tokio runtime.
    pub fn spawn(self, render: Render) -> Result<tokio::task::JoinHandle<()>> {
        use axum::routing::get;
        let addr = self.addr;
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|source| Error::MetricsBind { addr, source })?;
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    debug!("metrics scrape");
                    (
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        render().await,
                    )
                }
            }),
        );
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(%addr, error = %e, "metrics endpoint stopped");
            }
        }))
    }
}

/// A set of metric families for one scrape: names, help texts and the
/// values read from the daemon's counters. Label values are what the
/// daemon shows in `status` (peer names, carrier kinds, reasons), never
/// keys or addresses of payloads.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

/// One metric family (see [`Exposition`]).
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, Value)>,
}

type Labels = Vec<(Cow<'static, str>, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram {
        sum: f64,
        count: u64,
        /// Upper bound and the count of that bucket alone (the encoder
        /// accumulates), the last bound `+Inf`.
        buckets: Vec<(f64, u64)>,
    },
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter family; the encoder appends `_total` to `name`.
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, help, Kind::Counter)
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, help, Kind::Gauge)
    }

    /// A histogram family.
    pub fn histogram(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, help, Kind::Histogram)
    }

    fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) -> &mut Family {
        self.families.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        });
        self.families.last_mut().expect("just pushed")
    }

    /// The text page (OpenMetrics, see [`CONTENT_TYPE`]).
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an encoder error would be a
        // bug in a family (e.g. a histogram without buckets): say so.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

impl Family {
    /// Adds a counter sample (on a counter family).
    pub fn count(&mut self, labels: &[(&'static str, &str)], v: u64) -> &mut Self {
        self.push(labels, Value::Counter(v))
    }

    /// Adds a gauge sample (on a gauge family).
    pub fn set(&mut self, labels: &[(&'static str, &str)], v: f64) -> &mut Self {
        self.push(labels, Value::Gauge(v))
    }

    /// Adds a histogram sample: `buckets` are upper bounds with the count of
    /// each bucket alone; a `+Inf` bucket is added for what lies above.
    pub fn observe(
        &mut self,
        labels: &[(&'static str, &str)],
        sum: f64,
        count: u64,
        buckets: &[(f64, u64)],
    ) -> &mut Self {
        let mut b = buckets.to_vec();
        let below: u64 = buckets.iter().map(|(_, n)| n).sum();
        b.push((f64::INFINITY, count.saturating_sub(below)));
        self.push(
            labels,
            Value::Histogram {
                sum,
                count,
                buckets: b,
            },
        )
    }

    fn push(&mut self, labels: &[(&'static str, &str)], v: Value) -> &mut Self {
        let labels = labels
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), (*v).to_owned()))
            .collect();
        self.samples.push((labels, v));
        self
    }
}

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut m = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                // No labels: no `{}` after the name.
                if labels.is_empty() {
                    encode_value(&mut m, v)?;
                } else {
                    encode_value(&mut m.encode_family(labels)?, v)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    v: &Value,
) -> std::result::Result<(), std::fmt::Error> {
    match v {
        Value::Counter(n) => m.encode_counter::<NoLabelSet, _, u64>(n, None::<&Exemplar<_, u64>>),
        Value::Gauge(g) => m.encode_gauge(g),
        Value::Histogram {
            sum,
            count,
            buckets,
        } => m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_as_openmetrics_text() {
        let mut e = Exposition::new();
        e.counter("fpn_test_packets", "Packets.")
            .count(&[("peer", "b"), ("direction", "out")], 7);
        e.gauge("fpn_test_up", "Up.").set(&[], 1.0);
        e.histogram("fpn_test_seconds", "Durations.")
            .observe(&[], 0.5, 3, &[(0.1, 1), (1.0, 1)]);
        let text = e.encode();
        assert!(
            text.contains("fpn_test_packets_total{peer=\"b\",direction=\"out\"} 7"),
            "{text}"
        );
        assert!(text.contains("fpn_test_up 1.0"), "{text}");
        assert!(
            text.contains("fpn_test_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("fpn_test_seconds_bucket{le=\"1.0\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
