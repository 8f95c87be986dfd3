"""The FastProxy client SDK: interceptors for the app's own gRPC channels.

```python
channel = grpc.intercept_channel(grpc.insecure_channel("127.0.0.1:7001"),
                                 *fastproxy.client_interceptors(service="chat_service",
                                                                center="127.0.0.1:7070"))
```

Through an out-proxy (the default) they add a default deadline (the destination's
`timeout_ms`), W3C trace context, and retries the policy's `retry` allows. With
`embedded=True` they do the out-proxy's job in the app: route, sign, seal each request and
open each response with the pipeline's stages. Sync and aio are twins over one `SdkCore`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from .background_policy import BackgroundPolicy
from .config import SdkConfig, SdkConfigError, resolve_config
from .core import SdkCore, compile_for

__all__ = ["InterceptorSet", "SdkConfigError", "aio_client_interceptors",
           "client_interceptors"]


class InterceptorSet(tuple[Any, ...]):
    """The four interceptors (unary-unary, unary-stream, stream-unary, stream-stream), as a
    tuple to unpack into `grpc.intercept_channel` or pass as `interceptors=`; `close()`
    stops the policy watch (also on `with ... as interceptors:` exit)."""

    core: SdkCore

    def __new__(cls, interceptors: tuple[Any, ...], core: SdkCore) -> InterceptorSet:
        made = super().__new__(cls, interceptors)
        made.core = core
        return made

    @property
    def config(self) -> SdkConfig:
        return self.core.config

    def wait_for_policy(self, timeout_s: float = 5.0) -> bool:
        """True once a policy is in (always True without a Center or policy file)."""
        source = self.core.source
        return source is None or source.wait(timeout_s) is not None

    def close(self) -> None:
        self.core.close()

    def __enter__(self) -> InterceptorSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _build(make: Callable[[SdkCore], tuple[Any, ...]],
           tracing: Callable[[Any], tuple[Any, ...]], *, service: str | None,
           center: str | None, embedded: bool | None, token: str | None,
           tls_ca: str | None, tls_cert: str | None, tls_key: str | None,
           center_public_key: str | bytes | None, timeout_ms: int | None,
           policy_file: str | None, cache_dir: str | None, policy_wait_s: float | None,
           node_id: str | None, tracer_provider: Any | None) -> InterceptorSet:
    config = resolve_config(
        service=service, center=center, embedded=embedded, token=token, tls_ca=tls_ca,
        tls_cert=tls_cert, tls_key=tls_key, center_public_key=center_public_key,
        timeout_ms=timeout_ms, policy_file=policy_file, cache_dir=cache_dir,
        policy_wait_s=policy_wait_s, node_id=node_id)
    source: BackgroundPolicy[Any] | None = None
    if config.center or config.policy_file:
        source = BackgroundPolicy(config, compile_for(config))
    core = SdkCore(config, source)
    from .tracing_interceptors import client_spans

    spans = client_spans(tracer_provider, config.service or "")
    # The CLIENT span's interceptors go first (outermost); none without a tracer.
    traced = tracing(spans) if spans is not None else ()
    return InterceptorSet((*traced, *make(core)), core)


def client_interceptors(*, service: str | None = None, center: str | None = None,
                        embedded: bool | None = None, token: str | None = None,
                        tls_ca: str | None = None, tls_cert: str | None = None,
                        tls_key: str | None = None,
                        center_public_key: str | bytes | None = None,
                        timeout_ms: int | None = None, policy_file: str | None = None,
                        cache_dir: str | None = None, policy_wait_s: float | None = None,
                        node_id: str | None = None,
                        tracer_provider: Any | None = None) -> InterceptorSet:
    """Interceptors for `grpc.intercept_channel(channel, *interceptors)`.

    Arguments left out come from `FASTPROXY_SERVICE`, `FASTPROXY_CENTER`, `FASTPROXY_EMBEDDED`,
    `FASTPROXY_TOKEN`, `FASTPROXY_TLS_CA`, `FASTPROXY_TLS_CERT`, `FASTPROXY_TLS_KEY`,
    `FASTPROXY_CENTER_PUBLIC_KEY`, `FASTPROXY_TIMEOUT_MS`, `FASTPROXY_POLICY_FILE`,
    `FASTPROXY_CACHE_DIR`. `timeout_ms` is the deadline of calls that set none when the
    policy gives none; `policy_wait_s` how long an embedded call without a deadline waits
    for the first policy (default 5 s). Each call gets a CLIENT span from `tracer_provider`
    (default: OpenTelemetry's global provider, as configured when this is called; none if
    none is). Raises `SdkConfigError` on bad configuration.
    """
    from .sync_interceptors import sync_interceptors
    from .tracing_interceptors import sync_tracing

    return _build(sync_interceptors, sync_tracing, service=service, center=center,
                  embedded=embedded, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                  center_public_key=center_public_key, timeout_ms=timeout_ms,
                  policy_file=policy_file, cache_dir=cache_dir, policy_wait_s=policy_wait_s,
                  node_id=node_id, tracer_provider=tracer_provider)


def aio_client_interceptors(*, service: str | None = None, center: str | None = None,
                            embedded: bool | None = None, token: str | None = None,
                            tls_ca: str | None = None, tls_cert: str | None = None,
                            tls_key: str | None = None,
                            center_public_key: str | bytes | None = None,
                            timeout_ms: int | None = None, policy_file: str | None = None,
                            cache_dir: str | None = None, policy_wait_s: float | None = None,
                            node_id: str | None = None,
                            tracer_provider: Any | None = None) -> InterceptorSet:
    """The same as `client_interceptors`, for `grpc.aio.insecure_channel(...,
    interceptors=...)` and `grpc.aio.secure_channel`."""
    from .aio_interceptors import aio_interceptors
    from .tracing_interceptors import aio_tracing

    return _build(aio_interceptors, aio_tracing, service=service, center=center, embedded=embedded,
                  token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                  center_public_key=center_public_key, timeout_ms=timeout_ms,
                  policy_file=policy_file, cache_dir=cache_dir, policy_wait_s=policy_wait_s,
                  node_id=node_id, tracer_provider=tracer_provider)
