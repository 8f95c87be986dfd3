"""Runs one fuzz target under atheris (libFuzzer, coverage-guided):

    python tests/fuzz/run.py TARGET [libFuzzer flags] [CORPUS_DIR ...]

for example `python tests/fuzz/run.py call -max_total_time=60 /tmp/new tests/fuzz/corpus/call`
(libFuzzer writes what it finds to the first directory, and reads all; `-merge=1 DIR NEW`
keeps in DIR only what adds coverage). A crash (any
exception but the target's refusals, a time-out, memory past `-rss_limit_mb`) is written
as `crash-*` / `timeout-*` / `oom-*` beside `-artifact_prefix`; add it to
`corpus/regressions/TARGET/` so that `tests/test_fuzz.py` replays it from then on.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["fastproxy", "proxy_svc"]):
    import targets


def main() -> None:
    name = sys.argv[1]
    if name not in targets.TARGETS:
        sys.exit(f"run.py: unknown target {name!r} (one of {', '.join(targets.TARGETS)})")

    def one_input(data: bytes) -> None:
        targets.run_one(name, data)

    # libFuzzer runs `argv[0] FLAGS` again in a shell for `-merge=1` and `-fork`: the
    # interpreter, this script and the target make that command.
    command = f"{sys.executable} {sys.argv[0]} {name}"
    atheris.Setup([command, *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
