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


# Reasons recorded in the history's ``switch_reason`` column.
START, K2_DONE, CONVERGED, PLATEAU, CAP = "start", "k2", "converged", "plateau", "cap"


@dataclass(frozen=True)
class AdaptiveRule:
    """When backtracking leaves a path node: on convergence of the score mismatch against it.

    The mismatch is smoothed with an exponential moving average. ``warmup``
    iterations after a switch its smoothed value is taken as the node's
    reference; the walk moves on when the smoothed mismatch drops below
    ``fraction`` x reference (``converged``), or when it has made no new low
    for ``window`` iterations (``plateau``), or after ``cap`` iterations on the
    node (``cap``).
    """

    fraction: float = 0.5    # share of the reference mismatch that counts as converged (0..1)
    window: int = 100        # iterations without a new low that count as a plateau (count)
    cap: int = 500           # most iterations per intermediate node (count)
    warmup: int = 20         # iterations after a switch before the reference is taken (count)
    smoothing: float = 0.9   # EMA factor of the mismatch per iteration (0..1; 0 = no smoothing)

    def __post_init__(self):
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")
        for name in ("window", "cap", "warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.warmup >= self.cap:
            raise ValueError(f"warmup ({self.warmup}) must be below cap ({self.cap})")


class Walk:
    """The order of targets in stage 2 and when to move on.

    ``switch`` = ``fixed`` follows :func:`backtracking_schedule` (K2 iterations
    per intermediate node); ``adaptive`` follows an :class:`AdaptiveRule` fed
    with the score mismatch after every generator iteration. Without a path
    (the baseline) the teacher is the target throughout.

    Call :meth:`target_for` at the start of iteration ``it`` (1-based): it
    returns ``(key, reason)`` when the target changes there, else None. Call
    :meth:`observe` with the iteration's mismatch after the step.
    """

    def __init__(self, path_keys: list[str], switch: str, k2: int, budget: int,
                 rule: AdaptiveRule | None = None):
        if switch not in ("fixed", "adaptive"):
            raise ValueError(f"backtracking.switch must be 'fixed' or 'adaptive', got {switch!r}")
        self.switch, self.rule = switch, rule or AdaptiveRule()
        self.segments = backtracking_schedule(path_keys, k2 if switch == "fixed" else 0, budget)
        self._fixed = {seg.start: seg.target for seg in self.segments}
        self.queue = list(reversed(path_keys[1:-1])) + [TEACHER] if path_keys else [TEACHER]
        self.index = -1          # position in ``queue`` of the current target
        self._pending: str | None = START
        self._since = 0          # iterations on the current node
        self._smooth = self._ref = self._low = None
        self._low_at = 0

    _STATE = ("index", "_pending", "_since", "_smooth", "_ref", "_low", "_low_at")

    def state_dict(self) -> dict:
        """The walk's position (current node and the adaptive rule's running values), for training states."""
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])

    @property
    def uses_path(self) -> bool:
        return len(self.queue) > 1

    def target_for(self, it: int) -> tuple[str, str] | None:
        if self.switch == "fixed":
            if it not in self._fixed:
                return None
            key = self._fixed[it]
            return key, START if it == 1 else K2_DONE
        if self._pending is None:
            return None
        reason, self._pending = self._pending, None
        self.index += 1
        self._since, self._smooth, self._ref, self._low = 0, None, None, None
        return self.queue[self.index], reason

    def observe(self, mismatch: float) -> None:
        """Feed the mismatch of the iteration just done (adaptive only; at the teacher nothing is decided)."""
        if self.switch == "fixed" or self.queue[self.index] == TEACHER:
            return
        r = self.rule
        self._since += 1
        self._smooth = mismatch if self._smooth is None else r.smoothing * self._smooth + (1 - r.smoothing) * mismatch
        if self._since < r.warmup:
            return
        if self._ref is None:
            self._ref, self._low, self._low_at = self._smooth, self._smooth, self._since
        if self._smooth < self._low:
            self._low, self._low_at = self._smooth, self._since
        if self._smooth <= r.fraction * self._ref:
            self._pending = CONVERGED
        elif self._since - self._low_at >= r.window:
            self._pending = PLATEAU
        elif self._since >= r.cap:
            self._pending = CAP
