//! Tracing for the `loom` binary. Every run gets an OpenTelemetry span (`loom.run`), a child
//! of the caller's W3C `traceparent` when it sent one, and everything Loom sends onwards
//! carries the trace on (see `loom_core::trace`), so one trace covers client → server →
//! worker → LLM call. Spans are exported over OTLP/HTTP (protobuf) only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; logs go to
//! stderr as `RUST_LOG` asks, and without it a worker's or a server's warnings and errors do
//! (`loom worker`, `loom serve`), other commands' none.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// What must be flushed before the process exits.
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
}

/// What a `service` (a worker, a server) logs on stderr without `RUST_LOG`.
const SERVICE_LOGS: &str =
    "loom=warn,loom_core=warn,loom_redis=warn,loom_server=warn,loom_ai=warn,loom_workflow=warn";

/// Installs the global subscriber: the OpenTelemetry layer for Loom's spans (exporting when
/// configured) and human-readable logs on stderr: what `RUST_LOG` asks for, else a `service`'s
/// warnings and errors.
pub(crate) fn init(service: bool) -> anyhow::Result<Telemetry> {
    let exporting = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("loom").build());
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("invalid OTLP exporter configuration")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("loom"))
        .with_filter(EnvFilter::new("loom=info,loom_core=info,loom_redis=info,loom_server=info,loom_ai=info,loom_workflow=info"));
    let filter = match std::env::var_os("RUST_LOG") {
        Some(_) => Some(EnvFilter::from_default_env()),
        None => service.then(|| EnvFilter::new(SERVICE_LOGS)),
    };
    let logs = filter.map(|filter| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours for a person at a terminal, plain text for a log file or a collector.
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
    });
    tracing_subscriber::registry()
        .with(spans)
        .with(logs)
        .try_init()
        .context("cannot install the tracing subscriber")?;
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Exports what is still buffered (bounded by the exporter's timeout).
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            say!("loom: could not flush traces: {e}");
        }
    }
}
