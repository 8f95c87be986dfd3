"""Writes the seed corpus of the fuzz targets: `python tests/fuzz/make_corpus.py`.

Seeds are valid inputs made with the fixed session and keys of `targets.py` (so a fuzzer
starts from inputs that go all the way through), named for what they are; those named
`valid-*` must be accepted (`tests/test_fuzz.py` checks it, so the corpus is remade when the
protocol changes). Kept by hand beside them: `corpus/found/TARGET/`, what longer runs
reached (`run.py TARGET -merge=1 corpus/found/TARGET NEW_DIR`), and
`corpus/regressions/TARGET/`, crashes a fuzzer found.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

import targets
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from targets import (
    CALLEE_NODE,
    CALLER_NODE,
    DESTINATION,
    METHOD,
    NOW,
    SETUP,
    fixed,
    fresh_callee_state,
    fresh_caller_session,
    scoped,
)

from fastproxy.pipeline.metadata import Metadata, metadata_digest
from fastproxy.pipeline.records import FINAL
from fastproxy.pipeline.stages import OutboundCall
from fastproxy.policy.signing import sign_snapshot
from fastproxy.v1 import policy_pb2 as pb
from fastproxy.v1 import session_pb2 as spb
from fastproxy.v1 import tunnel_pb2 as tpb
from proxy_svc.tunnel import encoded_frame, metadata_entries

CORPUS = Path(__file__).resolve().parent / "corpus"
REPO = Path(__file__).resolve().parents[2]

METADATA: dict[str, Metadata] = {
    "plain": (),
    "text-and-binary": (("x-trace", "abc"), ("x-raw-bin", b"\x00\xff\x01")),
    "credentials": (("authorization", "Bearer t0k3n"), ("cookie", "sid=1"),
                    ("x-token", "service secret"), ("x-a", "1"), ("x-a", "2")),
}
MESSAGES = {"plain": b"hello", "text-and-binary": b"\x00" * 3,
            "credentials": b"compressible " * 40}


def sealed_call(metadata: Metadata, message: bytes) -> tuple[OutboundCall, tpb.TunnelCall]:
    outbound = CALLER_NODE.outbound(DESTINATION, fresh_caller_session(), METHOD, metadata, NOW)
    return outbound, tpb.TunnelCall(
        method=METHOD, metadata=metadata_entries(outbound.metadata), timeout_us=2_000_000,
        message=outbound.seal_request(message, final=True))


def calls() -> Iterable[tuple[str, bytes]]:
    for name, metadata in METADATA.items():
        _, carried = sealed_call(metadata, MESSAGES[name])
        yield f"valid-{name}", carried.SerializeToString()


def responses() -> Iterable[tuple[str, bytes]]:
    for name, metadata in METADATA.items():
        outbound, _ = sealed_call((), b"request")
        inbound = CALLEE_NODE.inbound(METHOD, tuple(outbound.metadata), NOW,
                                      fresh_callee_state())
        initial = inbound.seal_head(metadata)
        message = inbound.seal_response(MESSAGES[name])
        trailers = inbound.seal_end(0, "", metadata)
        yield f"valid-{name}", tpb.TunnelReply(
            code=0, initial_metadata=metadata_entries(initial),
            trailing_metadata=metadata_entries(trailers), message=message).SerializeToString()
    outbound, _ = sealed_call((), b"request")
    inbound = CALLEE_NODE.inbound(METHOD, tuple(outbound.metadata), NOW, fresh_callee_state())
    trailers = inbound.seal_end(5, "no such song", (("x-why", "gone"),))
    yield "valid-error", tpb.TunnelReply(code=5, details="no such song",
                                         trailing_metadata=metadata_entries(trailers)
                                         ).SerializeToString()


def hellos() -> Iterable[tuple[str, bytes]]:
    yield "client-hello", targets.HELLO
    yield "server-hello", targets.ANSWER


def tunnel_messages() -> Iterable[tuple[str, bytes]]:
    frames = [encoded_frame(tpb.TunnelFrame(id=index + 1, call=carried))
              for index, (_, data) in enumerate(calls())
              for carried in [tpb.TunnelCall.FromString(data)]]
    yield "calls", b"".join(frames)
    yield "cancel-and-goaway", b"".join((encoded_frame(tpb.TunnelFrame(id=3, cancel=True)),
                                         encoded_frame(tpb.TunnelFrame(goaway=True))))
    yield "reply", encoded_frame(tpb.TunnelFrame(id=1, reply=tpb.TunnelReply(
        code=0, message=b"m", trailing_metadata=metadata_entries((("x-a", "1"),)))))


def snapshots() -> Iterable[tuple[str, bytes]]:
    key = Ed25519PrivateKey.from_private_bytes(fixed("center key"))
    roles = {"in": (pb.ROLE_IN, "song_service"), "out": (pb.ROLE_OUT, "chat_service"),
             "client": (pb.ROLE_CLIENT, "chat_service"), "app": (pb.ROLE_APP, "chat_service")}
    for name, (role, service) in roles.items():
        snapshot = scoped(role, service)
        snapshot.revision = 7
        valid = "valid-" if role != pb.ROLE_APP else ""  # an app node compiles no NodePolicy
        yield f"{valid}{name}-snapshot", snapshot.SerializeToString(deterministic=True)
        yield f"{name}-signed", sign_snapshot(snapshot, key).SerializeToString(
            deterministic=True)


def policies() -> Iterable[tuple[str, bytes]]:
    yield "valid-core", SETUP.yaml_text().encode()
    yield "example", (REPO / "examples" / "policy.yaml").read_bytes()
    yield "contract", (REPO / "tests" / "support" / "policy_samples"
                       / "contract_example.yaml").read_bytes()


def sealed() -> Iterable[tuple[str, bytes]]:
    """The first byte picks what is sealed (`targets.sealed`), the second its flags."""
    secret_keys = DESTINATION.secret_keys
    head = spb.CallHead(method=METHOD, timestamp_ms=int(NOW * 1000),
                        metadata_digest=metadata_digest((), secret_keys),
                        secret=[spb.MetadataPair(key="authorization", value=b"Bearer x")])
    yield "valid-call-head", bytes((targets.CALL_SEALED, 0)) + head.SerializeToString()
    final = FINAL
    yield "valid-request", bytes((targets.REQUEST_SEALED, final)) + b"hello"
    yield "valid-request-gzip", bytes((targets.REQUEST_SEALED, final | spb.CODEC_GZIP)) + \
        gzip.compress(b"hello " * 100, mtime=0)
    yield "valid-request-zstd", bytes((targets.REQUEST_SEALED, final | spb.CODEC_ZSTD)) + \
        zstandard.ZstdCompressor().compress(b"hello " * 100)
    yield "valid-response-zstd", bytes((targets.RESPONSE_SEALED, spb.CODEC_ZSTD)) + \
        zstandard.ZstdCompressor().compress(b"answer " * 100)
    yield "valid-response-head", bytes((targets.HEAD_SEALED, 0)) + spb.ResponseHead(
        metadata_digest=metadata_digest((("x-a", "1"),), secret_keys)).SerializeToString()
    yield "valid-response-end", bytes((targets.END_SEALED, 0)) + spb.ResponseEnd(
        code=0, details_digest=hashlib.sha256(b"").digest(),
        trailers_digest=metadata_digest((), secret_keys)).SerializeToString()


SEEDS = {"call": calls, "response": responses, "hello": hellos, "tunnel": tunnel_messages,
         "snapshot": snapshots, "policy": policies, "sealed": sealed}


def main() -> None:
    for target, seeds in SEEDS.items():
        directory = CORPUS / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in seeds():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(list(directory.iterdir()))} seeds")


if __name__ == "__main__":
    main()
