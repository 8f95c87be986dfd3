"""Observability shared by every FastProxy host: traces, metrics and structured logs.

- `setup.configure_telemetry(...)` configures OpenTelemetry from the standard `OTEL_*`
  environment variables (and a Prometheus scrape endpoint when asked), once per process.
- `metrics` holds the instruments (`ProxyMetrics`) and `meter()` for other components.
- `tracing` holds the span helpers; with no exporter configured they are never called.
- `logs` formats log records as text or JSON lines, with the trace id where there is one.

Importing this package is light: OpenTelemetry's SDK and exporters load only on setup.
"""
