//! W3C trace context across Loom's hops, so one trace covers client → server → worker → LLM
//! call: a run's span takes the caller's `traceparent` as its parent ([`set_remote_parent`]),
//! and whatever Loom sends onwards (a Redis request, an upstream HTTP request) carries the
//! current span's ([`current_traceparent`]).
//!
//! Spans get OpenTelemetry contexts only where a `tracing-opentelemetry` layer is installed
//! (the `loom` binary installs one; OTLP export is its choice); without it both functions do
//! nothing, so a library user pays nothing for tracing they did not set up.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and Redis request field) name of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Makes `span` a child of the remote span that `traceparent` (a W3C `traceparent` value)
/// names. Returns whether the value was a valid trace context; an invalid one is ignored.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) -> bool {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if !context.span().span_context().is_valid() {
        return false;
    }
    let _ = span.set_parent(context);
    true
}

/// The W3C `traceparent` of the current span, when it has a valid trace context.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}
