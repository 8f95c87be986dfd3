"""What a sidecar-mode SDK needs from the policy: per destination, its `timeout_ms` and retry
policy, by gRPC service name. No keys are compiled: the out-proxy seals and signs."""

from __future__ import annotations

from dataclasses import dataclass

from fastproxy.pipeline.metadata import grpc_service_of
from fastproxy.policy.model import RetryPolicy
from fastproxy.v1 import policy_pb2 as pb


@dataclass(frozen=True, slots=True)
class CallDefaults:
    timeout_ms: int  # 0: none
    retry: RetryPolicy | None


@dataclass(frozen=True, slots=True)
class CallDefaultsTable:
    by_grpc_service: dict[str, CallDefaults]

    @classmethod
    def from_snapshot(cls, snapshot: pb.PolicySnapshot) -> CallDefaultsTable:
        table: dict[str, CallDefaults] = {}
        for service in snapshot.services:
            retry = None
            if service.HasField("retry"):
                retry = RetryPolicy(service.retry.max_attempts, service.retry.initial_backoff_ms,
                                    service.retry.max_backoff_ms)
            defaults = CallDefaults(service.timeout_ms, retry)
            for grpc_service in service.grpc_services:
                table[grpc_service] = defaults
        return cls(table)

    def for_method(self, method: str) -> CallDefaults | None:
        """`method` is "/pkg.Service/Method"."""
        return self.by_grpc_service.get(grpc_service_of(method))
