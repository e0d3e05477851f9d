//! The read-only view of one pooler that both the admin console and the Prometheus exporter
//! render: the figures behind SHOW POOLS/DATABASES/LISTS, the statistics over time, the leak
//! detector's findings, and the exporter's registry with the series it publishes. Layer 5: it
//! reads pools and clients (below) and is handed the parts it reads; `Shared` (above) owns its
//! state, and the console and the exporter (above) render it.

/// The exporter's series: names and help texts.
pub(crate) mod catalogue;
/// SHOW POOLS/DATABASES/LISTS figures, shared by the console and the exporter.
pub(crate) mod figures;
/// The leak detector and its history.
pub(crate) mod leaks;
/// The Prometheus registry of one pooler and the pools' instruments it makes.
pub(crate) mod prometheus;
/// Per-database averages over the last stats_period.
pub(crate) mod stats;
