"""The metric tables of README.md and docs/reference.md, read back, so that a test can hold
what a process serves on `--metrics-port` to what the docs say.

- `documented_metrics(path)`: {Prometheus name: label names} from every table row whose first
  cell names `fastproxy_*` metrics (README: name | labels | what; reference: name | type |
  labels | what; "same" repeats the row above; parenthesised values are not labels).
- `undocumented(scraped, documented)`: what the scrape has that the docs do not say, as lines.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "docs" / "reference.md")
_PARENTHESES = re.compile(r"\([^)]*\)")
_QUOTED = re.compile(r"`([^`]+)`")
_SUFFIXES = ("_bucket", "_count", "_sum", "_created")

Scraped = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def documented_metrics(path: Path) -> dict[str, frozenset[str]]:
    metrics: dict[str, frozenset[str]] = {}
    labels: frozenset[str] = frozenset()
    for line in path.read_text().splitlines():
        if not line.startswith("| `fastproxy_"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = _QUOTED.findall(_PARENTHESES.sub("", cells[0]))
        cell = cells[2] if len(cells) >= 4 else cells[1]
        if cell != "same":
            bare = _PARENTHESES.sub("", cell)
            words = _QUOTED.findall(bare) if "`" in bare else bare.split(",")
            labels = frozenset(word.strip() for word in words if word.strip())
        for name in names:
            metrics[name] = labels
    return metrics


def undocumented(scraped: Scraped, documented: dict[str, frozenset[str]]) -> list[str]:
    problems: set[str] = set()
    for name, pairs in scraped:
        if not name.startswith("fastproxy_"):
            continue
        family = name if name in documented else next(
            (name.removesuffix(suffix) for suffix in _SUFFIXES
             if name.endswith(suffix) and name.removesuffix(suffix) in documented), None)
        if family is None:
            problems.add(f"{name}: not documented")
            continue
        labels = {key for key, _ in pairs if key != "le"}
        if labels != documented[family]:
            problems.add(f"{family}: labels {sorted(labels)}, documented "
                         f"{sorted(documented[family])}")
    return sorted(problems)
