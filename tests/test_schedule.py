import pytest

from disback_pipeline.diffusion.schedule import (
    TEACHER,
    Segment,
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
