"""The SDK's sans-IO parts: when a failed attempt is retried, and configuration from the
environment."""

from __future__ import annotations

import random

import grpc
import pytest

from fastproxy.policy.model import RetryPolicy
from fastproxy.sdk.config import SdkConfigError, resolve_config
from fastproxy.sdk.retry import retry_delay

POLICY = RetryPolicy(max_attempts=3, initial_backoff_ms=100, max_backoff_ms=150)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def delay(**overrides: object) -> float | None:
    args: dict[str, object] = {"attempts_made": 1, "code": UNAVAILABLE, "trailers": (),
                               "responded": False, "remaining_s": None,
                               "rng": random.Random(1)}
    args.update(overrides)
    policy = args.pop("policy", POLICY)
    return retry_delay(policy, **args)  # type: ignore[arg-type]


def test_unavailable_before_a_response_is_retried_within_the_backoff() -> None:
    for attempts in (1, 2):
        wait = delay(attempts_made=attempts)
        assert wait is not None and 0 <= wait <= 0.15


def test_nothing_else_is_retried() -> None:
    assert delay(code=grpc.StatusCode.INTERNAL) is None
    assert delay(responded=True) is None
    assert delay(attempts_made=3) is None
    assert delay(policy=None) is None
    assert delay(trailers=(("fastproxy-error", "denied"),)) is None
    assert delay(trailers=(("fastproxy-error", "unavailable"),)) is not None


def test_a_retry_never_waits_past_the_deadline() -> None:
    assert delay(remaining_s=0.0) is None


def test_configuration_from_the_environment() -> None:
    env = {"FASTPROXY_SERVICE": "chat_service", "FASTPROXY_CENTER": "127.0.0.1:7070",
           "FASTPROXY_EMBEDDED": "true", "FASTPROXY_TIMEOUT_MS": "750"}
    none: dict[str, None] = dict.fromkeys(
        ("service", "center", "embedded", "token", "tls_ca", "tls_cert", "tls_key",
         "center_public_key", "timeout_ms", "policy_file", "cache_dir", "policy_wait_s",
         "node_id"))
    config = resolve_config(**none, environ=env)
    assert (config.service, config.center, config.embedded, config.timeout_ms) == (
        "chat_service", "127.0.0.1:7070", True, 750)
    overridden = resolve_config(**{**none, "embedded": False}, environ=env)  # type: ignore[arg-type]
    assert overridden.embedded is False
    with pytest.raises(SdkConfigError, match="service is required"):
        resolve_config(**none, environ={"FASTPROXY_EMBEDDED": "1",
                                        "FASTPROXY_CENTER": "127.0.0.1:1"})
    with pytest.raises(SdkConfigError, match="FASTPROXY_EMBEDDED"):
        resolve_config(**none, environ={"FASTPROXY_EMBEDDED": "maybe"})


def test_import_fastproxy_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, fastproxy; assert 'grpc' not in sys.modules; "
            "assert callable(fastproxy.client_interceptors); "
            "assert callable(fastproxy.aio_client_interceptors)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
