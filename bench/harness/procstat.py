"""CPU time and peak memory of a process and its children, read from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants still alive (for `--workers N` and nginx workers)."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        for task in _tasks(current):
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            found.extend(int(child) for child in children)
    return found


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # fields after the command name (which may hold spaces) start at state = field 3
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def peak_rss_kib(pid: int, field: str = "VmHWM") -> int:
    """VmHWM: the largest resident set the process has had (`field="VmRSS"`: the current)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class TreeSample:
    """CPU seconds per pid of one process tree at one moment."""

    cpu_by_pid: dict[int, float]

    @classmethod
    def take(cls, root: int) -> TreeSample:
        return cls({pid: cpu_seconds(pid) for pid in process_tree(root)})

    def cpu_since(self, earlier: TreeSample) -> float:
        """CPU seconds spent by the tree between `earlier` and this sample."""
        return sum(now - earlier.cpu_by_pid.get(pid, 0.0) for pid, now in self.cpu_by_pid.items())


def tree_peak_rss_kib(root: int, field: str = "VmHWM") -> tuple[int, int]:
    """(largest VmHWM of one process in the tree, sum of VmHWM over the tree)."""
    peaks = [peak_rss_kib(pid, field) for pid in process_tree(root)]
    return max(peaks, default=0), sum(peaks)
