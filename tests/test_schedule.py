import pytest

from disback_pipeline.diffusion.schedule import (
    CAP,
    CONVERGED,
    K2_DONE,
    PLATEAU,
    START,
    TEACHER,
    AdaptiveRule,
    Segment,
    Walk,
    backtracking_schedule,
    reaches_teacher,
    target_at,
)

KEYS = ["000000", "000100", "000200", "000300", "000400"]  # P_0 (teacher) .. P_4


def test_walks_path_in_reverse_then_teacher_to_the_end():
    s = backtracking_schedule(KEYS, k2=10, budget=100)
    assert s == [Segment(1, 10, "000300"), Segment(11, 20, "000200"), Segment(21, 30, "000100"),
                 Segment(31, 100, TEACHER)]
    assert sum(seg.length for seg in s) == 100
    assert [target_at(s, i) for i in (1, 10, 11, 30, 31, 100)] == \
        ["000300", "000300", "000200", "000100", TEACHER, TEACHER]
    assert reaches_teacher(s)


def test_n_equals_one_goes_straight_to_the_teacher():
    assert backtracking_schedule(["000000", "000050"], k2=10, budget=30) == [Segment(1, 30, TEACHER)]


def test_k2_zero_and_empty_path_are_the_baseline():
    assert backtracking_schedule(KEYS, k2=0, budget=7) == [Segment(1, 7, TEACHER)]
    assert backtracking_schedule([], k2=10, budget=7) == [Segment(1, 7, TEACHER)]


def test_budget_shorter_than_the_path_cuts_the_walk():
    s = backtracking_schedule(KEYS, k2=10, budget=25)
    assert s == [Segment(1, 10, "000300"), Segment(11, 20, "000200"), Segment(21, 25, "000100")]
    assert not reaches_teacher(s)
    exact = backtracking_schedule(KEYS, k2=10, budget=31)
    assert exact[-1] == Segment(31, 31, TEACHER)


@pytest.mark.parametrize(("keys", "k2", "budget", "match"), [
    (KEYS, -1, 10, "K2"),
    (KEYS, 2.5, 10, "K2"),
    (KEYS, 1, 0, "budget"),
    (KEYS, True, 10, "K2"),
    (["000000"], 1, 10, "at least two nodes"),
    (["000000", "000000"], 1, 10, "unique"),
])
def test_invalid_values(keys, k2, budget, match):
    with pytest.raises(ValueError, match=match):
        backtracking_schedule(keys, k2, budget)


def test_target_at_outside_schedule():
    with pytest.raises(ValueError, match="outside the schedule"):
        target_at(backtracking_schedule(KEYS, 1, 5), 6)


def _walk_on(curve, rule, keys=KEYS, budget=None):
    """Feed a synthetic mismatch curve per node: ``curve(node_index, i)``; returns the switches (it, key, why)."""
    walk = Walk(keys, "adaptive", k2=0, budget=budget or 10_000, rule=rule)
    switches, node, since = [], -1, 0
    for it in range(1, (budget or 10_000) + 1):
        s = walk.target_for(it)
        if s is not None:
            switches.append((it, *s))
            node, since = node + 1, 0
        since += 1
        walk.observe(curve(node, since))
    return switches


def test_adaptive_moves_on_when_the_mismatch_has_dropped_to_the_fraction():
    import math

    rule = AdaptiveRule(fraction=0.5, window=1000, cap=5000, warmup=10, smoothing=0.0)
    # exponential decay from 1 with time constant 100: the reference is taken at i = 10 (value e^-0.1), and
    # e^(-i/100) <= 0.5 e^-0.1 first at i = 10 + 100 ln 2 = 79.3, i.e. i = 80
    switches = _walk_on(lambda node, i: math.exp(-i / 100), rule, budget=400)
    assert switches[:4] == [(1, "000300", START), (81, "000200", CONVERGED), (161, "000100", CONVERGED),
                            (241, TEACHER, CONVERGED)]
    assert len(switches) == 4  # the teacher stays the target to the end


def test_adaptive_moves_on_at_a_plateau_and_at_the_cap():
    flat = AdaptiveRule(fraction=0.5, window=30, cap=500, warmup=5, smoothing=0.0)
    # a constant mismatch never makes a new low after the reference (taken at i = 5): plateau at i = 35
    switches = _walk_on(lambda node, i: 1.0, flat, budget=200)
    assert [(it, why) for it, _, why in switches] == [(1, START), (36, PLATEAU), (71, PLATEAU), (106, PLATEAU)]
    capped = AdaptiveRule(fraction=0.01, window=1000, cap=50, warmup=5, smoothing=0.0)
    # a slow steady fall: always a new low, never below 1%: the cap ends every node at 50 iterations
    switches = _walk_on(lambda node, i: 1.0 - 0.001 * i, capped, budget=200)
    assert [(it, why) for it, _, why in switches] == [(1, START), (51, CAP), (101, CAP), (151, CAP)]


def test_adaptive_smoothing_ignores_single_noisy_dips():
    import random

    rng = random.Random(0)
    rule = AdaptiveRule(fraction=0.5, window=10_000, cap=300, warmup=20, smoothing=0.9)
    # noise around a constant level with rare deep dips: the smoothed value never halves, so the cap decides
    switches = _walk_on(lambda node, i: 0.05 if i % 97 == 0 else 1.0 + 0.1 * rng.uniform(-1, 1), rule, budget=700)
    assert [why for _, _, why in switches] == [START, CAP, CAP]


def test_fixed_walk_gives_the_schedule_with_reasons():
    walk = Walk(KEYS, "fixed", k2=10, budget=40)
    got = [(it, walk.target_for(it)) for it in range(1, 41)]
    assert [(it, s) for it, s in got if s is not None] == [(1, ("000300", START)), (11, ("000200", K2_DONE)),
                                                           (21, ("000100", K2_DONE)), (31, (TEACHER, K2_DONE))]
    baseline = Walk([], "adaptive", k2=0, budget=5)
    assert baseline.target_for(1) == (TEACHER, START) and not baseline.uses_path
    baseline.observe(1.0)
    assert baseline.target_for(2) is None


def test_adaptive_rule_and_walk_refuse_bad_values():
    with pytest.raises(ValueError, match="fraction must be in"):
        AdaptiveRule(fraction=1.5)
    with pytest.raises(ValueError, match="warmup"):
        AdaptiveRule(warmup=600, cap=500)
    with pytest.raises(ValueError, match="window must be an integer"):
        AdaptiveRule(window=2.5)
    with pytest.raises(ValueError, match="switch must be 'fixed' or 'adaptive'"):
        Walk(KEYS, "sometimes", k2=10, budget=10)
