"""The committed generated/ tree is exactly what scripts/gen_protos.sh makes from protos/:
a .proto changed without regenerating fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "generated"


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        check=True, capture_output=True, timeout=60,
    )
    fresh = files_under(out)
    committed = files_under(COMMITTED)
    assert fresh, "the script generated nothing"
    assert sorted(set(fresh) - set(committed)) == [], "generated but not committed"
    assert sorted(set(committed) - set(fresh)) == [], "committed but no longer generated"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert stale == [], f"stale: rerun scripts/gen_protos.sh ({stale})"
