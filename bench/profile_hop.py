"""Where a sealed hop spends its time: py-spy on the out-proxy and the in-proxy under load.

    python bench/profile_hop.py [--seconds 10] [--size 1024] [--out bench/results]

Starts the `sealed` setup of the data-plane harness (upstream, Center, in-proxy, out-proxy on
loopback), drives 1 KiB unary calls through it with h2load, records both proxies at once with
`py-spy record --native` (stacks including the C/Cython frames of grpcio), and writes
`profile-out-proxy.txt` and `profile-in-proxy.txt`: the functions with the most samples on
top of the stack (self) and on the stack at all (inclusive), and the raw collapsed stacks
next to them (`.folded`, for flame graphs).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from harness import h2load  # noqa: E402
from harness.pyload import payload  # noqa: E402
from harness.setups import Topology  # noqa: E402

_LINE = re.compile(r":\d+\)$")
# a sample counts for a category when any frame of its stack contains one of the strings
CATEGORIES: dict[str, tuple[str, ...]] = {
    "security pipeline (fastproxy core: seal/open, sign, authz, rate limit, policy)": (
        "client/pipeline/", "hmac.py"),
    "new upstream call object (MultiCallable.__call__, StreamStreamCall init/_prepare_rpc)": (
        "_prepare_rpc", "StreamStreamCall.__init__", "MultiCallable.__call__"),
    "upstream request writes (_write, _done_writing, request iterator)": (
        "_StreamRequestMixin._write", "_done_writing", "_consume_request_iterator"),
    "upstream response reads (_read)": ("_StreamResponseMixin._read",),
    "grpc poller thread (C-core polling, Thread.run)": ("Thread.run",),
    "asyncio selector wait (EpollSelector.select)": ("EpollSelector.select",),
    "metadata conversion (client/pipeline/metadata.py)": ("client/pipeline/metadata.py",),
    "logging": ("logging/",),
}


def frame_name(frame: str) -> str:
    """`func (path/file.py:123)` -> `func (file.py)`: lines merged, paths shortened."""
    name = _LINE.sub(")", frame.strip())
    if " (" in name:
        func, _, where = name.partition(" (")
        parts = where.rstrip(")").split("/")
        name = f"{func} ({'/'.join(parts[-2:])})"
    return name


def summarize(folded: str, title: str, seconds: float, top: int = 30) -> str:
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        self_samples[frames[-1]] += count
        for frame in set(frames[1:]):  # frames[0] is the thread
            inclusive[frame] += count
        for category, needles in CATEGORIES.items():
            if any(needle in frame for frame in stack.split(";") for needle in needles):
                categories[category] += count
    lines = [f"{title}: {total} samples in {seconds:.0f} s at 100 Hz "
             f"(active threads only; {total / max(seconds * 100, 1):.0%} of one core-second "
             f"per second)", "", "by category (a sample may count in several):"]
    lines += [f"  {categories[name] / max(total, 1):6.1%}  {name}" for name in CATEGORIES]
    lines += ["", "self (on top of the stack):"]
    lines += [f"  {count / max(total, 1):6.1%}  {name}"
              for name, count in self_samples.most_common(top)]
    lines += ["", "inclusive (anywhere on the stack):"]
    lines += [f"  {count / max(total, 1):6.1%}  {name}"
              for name, count in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def resummarize(folded: Path, seconds: float) -> str:
    """The summary of an existing `.folded` file (e.g. after changing CATEGORIES)."""
    return summarize(folded.read_text(), folded.stem.removeprefix("profile-"), seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--python-only", action="store_true",
                        help="Python frames only (no --native); files end in -python")
    parser.add_argument("--setup", default="sealed",
                        help="a harness setup with both proxies (sealed, sealed-no-tunnel, "
                             "observed, observed-sampled, ...); files of setups other than "
                             "sealed are named after it")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastproxy-profile-") as tmp:
        topology = Topology([args.setup], Path(tmp))
        load: subprocess.Popen[bytes] | None = None
        try:
            setup = topology.start()[args.setup]
            frame = h2load.write_frame(Path(tmp) / "frame.bin", payload(args.size))
            load = subprocess.Popen(
                h2load.command(f"http://{setup.entry}{setup.unary_method}", frame,
                               10_000_000, 4, 16),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            recorders = {}
            for label in ("out-proxy", "in-proxy"):
                suffix = "-python" if args.python_only else ""
                tag = "" if args.setup == "sealed" else f"-{args.setup.replace('+', '-')}"
                folded = args.out / f"profile-{label}{tag}{suffix}.folded"
                recorders[label] = (folded, subprocess.Popen(
                    [py_spy, "record", "--pid", str(setup.processes[label].pid),
                     *(() if args.python_only else ("--native",)),
                     "--duration", str(int(args.seconds)), "--rate", "100",
                     "--format", "raw", "--output", str(folded)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            for label, (folded, recorder) in recorders.items():
                _, err = recorder.communicate(timeout=args.seconds + 60)
                if recorder.returncode != 0 or not folded.exists():
                    print(f"py-spy on {label} failed: {err[-500:]}", file=sys.stderr)
                    return 1
                text = summarize(folded.read_text(), f"{label}, {args.size} B unary under "
                                 f"h2load -c 4 -m 16 ({args.setup} setup)", args.seconds)
                (args.out / folded.name.replace(".folded", ".txt")).write_text(text)
                print(text)
        finally:
            if load is not None and load.poll() is None:
                load.terminate()
                load.wait(10)
            topology.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
