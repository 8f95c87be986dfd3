"""Log lines as text (default) or JSON, with the trace id where there is one.

Every host calls `configure_logging(level, log_format)` once at start. Structured fields go
in `extra={"fields": {...}}` (or through `log_event`); the JSON formatter writes them as keys
of the line, the text formatter as `key=value` after the message. A record gets `trace_id`
and `span_id` from its fields, else from the span current when it was logged.

Never pass a secret, a key, a token or a message payload as a field or in a message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """One log line with structured `fields` (values: str, int, float, bool or None)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields})


audit_log = logging.getLogger("fastproxy.audit")


def audit_refused_call(*, proxy: str, caller: str, callee: str, method: str, reason: str,
                       revision: int, peer: str, detail: str,
                       trace_id: str | None = None, rule: str = "") -> None:
    """The one audit line of a refused call, wherever it was refused (proxy or embedded
    host): who called whom, what, why, under which revision and rule, from where. `detail`
    is what the caller was told (never a secret). The message itself names the parties and
    the reason, so that an app's own logging setup (`logging.basicConfig`) shows them too;
    JSON logs carry each field apart."""
    fields: dict[str, Any] = {
        "event": "refused", "proxy": proxy, "caller": caller, "callee": callee,
        "method": method, "reason": reason, "revision": revision, "peer": peer,
        "detail": detail,
    }
    if rule:
        fields["rule"] = rule
    if trace_id:
        fields["trace_id"] = trace_id
    log_event(audit_log, logging.WARNING,
              f"call refused: {caller or '?'} -> {callee or '?'} {method}: {reason} "
              f"(proxy {proxy}, revision {revision}{f', rule {rule}' if rule else ''})", **fields)


def audit_would_deny(*, proxy: str, caller: str, callee: str, method: str, revision: int,
                     audit: str, peer: str, trace_id: str | None = None) -> None:
    """The audit line of a call that passed only because of audit mode (`audit` names the
    service or rule in that mode): enforced, it would have been denied."""
    fields: dict[str, Any] = {
        "event": "would_deny", "proxy": proxy, "caller": caller, "callee": callee,
        "method": method, "reason": "denied", "rule": "none", "audit": audit,
        "revision": revision, "peer": peer,
    }
    if trace_id:
        fields["trace_id"] = trace_id
    log_event(audit_log, logging.WARNING,
              f"call would be denied: {caller} -> {callee} {method} passed in audit mode "
              f"({audit}, revision {revision})", **fields)


def _trace_fields(record: logging.LogRecord) -> dict[str, str]:
    fields: Mapping[str, Any] = getattr(record, "fields", None) or {}
    if "trace_id" in fields:
        return {}
    # No span can be current in a process that never loaded OpenTelemetry's API (a proxy
    # or Center without telemetry does not: issue 15, memory).
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the record's
    fields, trace_id/span_id, and the exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", None) or {})
        line.update(_trace_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The classic line, then the record's fields as `key=value`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {**(getattr(record, "fields", None) or {}), **_trace_fields(record)}
        if not fields:
            return text
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        head, sep, tail = text.partition("\n")
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: Any) -> str:
    text = "" if value is None else str(value)
    if not text or any(ch in text for ch in ' "=\n'):
        return json.dumps(text)
    return text


def configure_logging(level: str = "info", log_format: str = "text",
                      stream: TextIO | None = None) -> None:
    """Replaces the root logger's handlers with one writing to `stream` (stderr)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: use text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def add_logging_flags(parser: Any) -> None:
    """`--log-level` and `--log-format` on an argparse parser (same for every command)."""
    parser.add_argument("--log-level", default="info", choices=list(LEVELS))
    parser.add_argument("--log-format", default="text", choices=list(FORMATS),
                        help="text (default) or json: one JSON object a line, with the "
                             "trace id where there is one")


def add_metrics_flag(parser: Any) -> None:
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (HOST: "
                             "the --listen host); OTLP export follows the OTEL_* variables")
