//! The read-only view of one pooler that both the admin console and the Prometheus exporter
//! render: the figures behind SHOW POOLS/DATABASES/LISTS, the statistics over time, the leak
//! detector's findings, and the exporter's registry with the series it publishes. Layer 5: it
//! reads pools and clients (below) and is handed the parts it reads; `Shared` (above) owns its
//! state, and the console and the exporter (above) render it.

pub mod catalogue;
pub mod figures;
pub mod leaks;
pub mod prometheus;
pub mod stats;
