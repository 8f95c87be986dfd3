"""Fuzzing (issue 13, point 9; docs/security.md, "Hardening"): the parsers that take bytes from
the network or from operators (`tests/fuzz/targets.py`: a call's CALL record, metadata and
request; a response's records; hellos; tunnel frames; snapshots; policy YAML; and what only
a peer with the session's keys can seal: record plaintexts, compressed payloads) either accept
an input or refuse it with their contracted error, never another exception, and in bounded
time and memory.

Every run replays the committed corpus (`tests/fuzz/corpus/TARGET/`: valid seeds; `found/`:
what longer runs reached, minimized with `-merge=1`; `regressions/`: crashes fuzzing once
found, none so far), then fuzzes each target for `FASTPROXY_FUZZ_SECONDS`
(default 6) with atheris, coverage-guided, in a process of its own (per input at most 10 s
and 2 GiB); where atheris cannot be installed, with hypothesis instead. Longer runs:
`python tests/fuzz/run.py TARGET -max_total_time=600 NEW_DIR tests/fuzz/corpus/TARGET`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402

CORPUS = FUZZ / "corpus"
SECONDS = int(os.environ.get("FASTPROXY_FUZZ_SECONDS", "6"))
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
NAMES = sorted(targets.TARGETS)


def corpus_dirs(target: str) -> list[Path]:
    return [path for path in (CORPUS / target, CORPUS / "found" / target,
                              CORPUS / "regressions" / target) if path.is_dir()]


def corpus(target: str) -> list[Path]:
    return sorted(path for directory in corpus_dirs(target) for path in directory.iterdir())


@pytest.mark.parametrize("target", NAMES)
def test_every_corpus_input_is_accepted_or_refused_with_its_reason(target: str) -> None:
    inputs = corpus(target)
    assert inputs, f"no corpus for {target} (python tests/fuzz/make_corpus.py)"
    for path in inputs:
        targets.run_one(target, path.read_bytes())


@pytest.mark.parametrize("target", ["call", "response", "snapshot", "policy", "sealed"])
def test_the_valid_seeds_go_all_the_way_through(target: str) -> None:
    """Seeds named `valid-*` are accepted: the fuzzer starts from inputs that reach the
    deepest checks (remake the corpus when the protocol changes)."""
    valid = [path for path in corpus(target) if path.name.startswith("valid-")]
    assert valid
    for path in valid:
        targets.TARGETS[target](path.read_bytes())


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (hypothesis runs)")
@pytest.mark.timeout(SECONDS + 60)
@pytest.mark.parametrize("target", NAMES)
def test_fuzzing_finds_no_crash(target: str, tmp_path: Path) -> None:
    found = tmp_path / "found"
    found.mkdir()
    done = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), target, f"-max_total_time={SECONDS}",
         "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={tmp_path}/",
         "-print_final_stats=1", str(found), *map(str, corpus_dirs(target))],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=SECONDS + 50)
    artifacts = [path.name for path in tmp_path.iterdir() if path.is_file()]
    assert done.returncode == 0 and not artifacts, (
        f"{target}: {artifacts} (move to tests/fuzz/corpus/regressions/{target}/)\n"
        f"{done.stderr[-4000:]}")
    assert "stat::number_of_executed_units" in done.stderr


@pytest.mark.skipif(HAVE_ATHERIS, reason="atheris runs instead")
@pytest.mark.parametrize("target", NAMES)
def test_random_inputs_are_accepted_or_refused_with_their_reason(target: str) -> None:
    @settings(max_examples=200 * SECONDS, deadline=10_000,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=4096))
    def one(data: bytes) -> None:
        targets.run_one(target, data)

    one()
