//! The Prometheus exporter: the HTTP endpoint (`GET /metrics`, `GET /health`) and the rendering
//! of one pooler's registry (`observe::prometheus`), with the series pgbouncer_exporter would
//! publish refreshed from the live state at scrape time (see `scrape`).

mod http;
mod scrape;

pub(crate) use http::serve;

use crate::observe::prometheus::Metrics;
use crate::shared::Shared;

/// The Prometheus text exposition of `metrics`, with the scrape-time series refreshed from
/// `shared`.
pub(crate) fn render(metrics: &Metrics, shared: &Shared) -> String {
    let extra = scrape::refresh(metrics, shared);
    let mut text = metrics.render_recorded();
    text.push_str(&extra);
    text
}
