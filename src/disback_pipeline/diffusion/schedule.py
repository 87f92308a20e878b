"""The backtracking switch schedule: a pure function of (path keys, K2, budget)."""

from __future__ import annotations

from dataclasses import dataclass

TEACHER = "teacher"


@dataclass(frozen=True)
class Segment:
    """Generator iterations ``start`` .. ``end`` (1-based, inclusive) aim at ``target``."""

    start: int
    end: int
    target: str  # a path key, or "teacher"

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def backtracking_schedule(path_keys: list[str], k2: int, budget: int) -> list[Segment]:
    """Targets for every generator iteration of stage 2.

    ``path_keys`` are the path's keys in order P_0 (the teacher) ... P_N. The
    fake score starts from P_N; the targets are P_{N-1}, ..., P_1 for ``k2``
    iterations each, then the teacher until ``budget`` iterations are done. An
    empty path or ``k2 = 0`` gives the baseline schedule: the teacher throughout.
    A budget shorter than the walk cuts it short (see :func:`reaches_teacher`).
    """
    if isinstance(k2, bool) or not isinstance(k2, int) or k2 < 0:
        raise ValueError(f"K2 (iterations per path node) must be an integer >= 0, got {k2!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget (generator iterations) must be an integer >= 1, got {budget!r}")
    if len(set(path_keys)) != len(path_keys):
        raise ValueError(f"path keys must be unique, got {path_keys}")
    if len(path_keys) == 1:
        raise ValueError("a degradation path needs at least two nodes (P_0 = teacher and P_N)")
    intermediate = list(reversed(path_keys[1:-1])) if k2 else []
    segments: list[Segment] = []
    start = 1
    for key in intermediate:
        if start > budget:
            break
        end = min(start + k2 - 1, budget)
        segments.append(Segment(start, end, key))
        start = end + 1
    if start <= budget:
        segments.append(Segment(start, budget, TEACHER))
    return segments


def reaches_teacher(segments: list[Segment]) -> bool:
    return bool(segments) and segments[-1].target == TEACHER


def target_at(segments: list[Segment], iteration: int) -> str:
    for seg in segments:
        if seg.start <= iteration <= seg.end:
            return seg.target
    raise ValueError(f"iteration {iteration} is outside the schedule (1..{segments[-1].end})")
