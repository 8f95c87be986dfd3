"""Where the proxyless path spends its time: py-spy on the client and on the app.

    python bench/profile_proxyless.py [--seconds 10] [--center] [--out bench/results]

Starts `bench/proxyless_micro.py`'s proxyless pair (the SDK in embedded mode in a grpc.aio
client, an echo app with the embedded server's interceptors; the policy from a file, or with
`--center` from a Center of its own), drives 1 KiB unary calls, 8 in flight, and records both
processes at once with `py-spy record` (Python frames; needs `pip install py-spy`). Writes
`profile-proxyless-client.txt` and `profile-proxyless-app.txt` (`-center` added with
`--center`): samples by category (FastProxy's core, its SDK or server glue, grpc.aio, the
asyncio loop, grpc's poller thread), then the functions most on top of the stack and on it at
all, as `profile_hop.py` summarizes a proxy.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import profile_hop  # noqa: E402
import proxyless_micro  # noqa: E402

CATEGORIES: dict[str, tuple[str, ...]] = {
    "FastProxy core (client/pipeline: records, sealing, stages, policy)": ("client/pipeline/",),
    "FastProxy SDK glue (client/sdk)": ("client/sdk/",),
    "FastProxy embedded server glue (client/server)": ("client/server/",),
    "grpc.aio client interceptor machinery (grpc/aio/_interceptor.py)": (
        "aio/_interceptor.py",),
    "grpc.aio calls (grpc/aio/_call.py, _channel.py, _metadata.py)": (
        "aio/_call.py", "aio/_channel.py", "aio/_metadata.py"),
    "asyncio event loop (_run_once, Handle._run, select)": (
        "BaseEventLoop._run_once", "EpollSelector.select"),
    "threads (grpc's poller, the policy watch loop: Thread.run)": ("Thread.run",),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--center", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 1
    profile_hop.CATEGORIES = CATEGORIES
    tag = "-center" if args.center else ""
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastproxy-profile-") as tmp:
        port = proxyless_micro._free_port()
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(proxyless_micro.policy_yaml(port))
        started: list[subprocess.Popen[str]] = []
        try:
            source = str(policy)
            if args.center:
                center_port = proxyless_micro._free_port()
                started.append(subprocess.Popen(
                    [sys.executable, "-m", "center_svc", "--listen",
                     f"127.0.0.1:{center_port}", "--store", "memory://", "--policy",
                     str(policy)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    text=True))
                source = f"center=127.0.0.1:{center_port}"
            base = [sys.executable, str(BENCH_DIR / "proxyless_micro.py"), "--policy", source,
                    "--port", str(port)]
            server = subprocess.Popen([*base, "--serve", "proxyless"], stdout=subprocess.PIPE,
                                      text=True)
            started.append(server)
            assert server.stdout is not None
            if server.stdout.readline().strip() != "listening":
                print("the app did not start", file=sys.stderr)
                return 1
            client = subprocess.Popen(
                [*base, "--client", "proxyless", "--server-pid", str(server.pid), "--seconds",
                 str(args.seconds + 3), "--concurrency", "8", "--load-only"],
                stdout=subprocess.PIPE,
                text=True)
            started.append(client)
            recorders = {}
            for label, process in (("client", client), ("app", server)):
                folded = Path(tmp) / f"{label}.folded"
                recorders[label] = (folded, subprocess.Popen(
                    [py_spy, "record", "--pid", str(process.pid), "--duration",
                     str(int(args.seconds)), "--rate", "100", "--format", "raw", "--output",
                     str(folded)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    text=True))
            for label, (folded, recorder) in recorders.items():
                _, err = recorder.communicate(timeout=args.seconds + 60)
                if recorder.returncode != 0 or not folded.exists():
                    print(f"py-spy on {label} failed: {err[-500:]}", file=sys.stderr)
                    return 1
                text = profile_hop.summarize(
                    folded.read_text(), f"proxyless {label}{tag}, 1 KiB unary, 8 in flight "
                    f"(bench/proxyless_micro.py pair)", args.seconds)
                path = args.out / f"profile-proxyless-{label}{tag}.txt"
                path.write_text(text)
                print(f"wrote {path}")
            client.wait(timeout=args.seconds + 120)
        finally:
            for process in reversed(started):
                if process.poll() is None:
                    process.terminate()
                    process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
