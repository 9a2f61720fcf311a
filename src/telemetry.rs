//! Logging and metrics. Logs go to stderr so commands that print a result on
//! stdout (`keys create`) stay pipeable; metrics are served at `/metrics` in
//! the Prometheus text format.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; `RUST_LOG` overrides `log.level`.
pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Upper bounds of the `sopr_router_confidence` buckets: dense near 1,
/// where thresholds for a target accuracy fall.
const CONFIDENCE_BUCKETS: [f64; 12] = [
    0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995,
];

/// The process-wide Prometheus recorder, installed on first use. Tests build
/// several services in one process; they share it.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let builder = PrometheusBuilder::new();
        // Buckets, so replicas aggregate and a share below a threshold reads
        // off one series; other histograms stay summaries.
        let recorder = builder
            .set_buckets_for_metric(
                Matcher::Full("sopr_router_confidence".into()),
                &CONFIDENCE_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; ours then stays unused but valid.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
