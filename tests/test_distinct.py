"""DistinctCount: exact for a fleet's usual size, a few KB for a flood of spoofed ids, and
within its stated error bound."""

from __future__ import annotations

from gateway.distinct import DistinctCount


def ids(start: int, stop: int) -> list[str]:
    return [f"dev-{n:07d}" for n in range(start, stop)]


def test_the_count_is_exact_up_to_the_threshold_and_repeats_do_not_count() -> None:
    count = DistinctCount(exact_up_to=1000)
    for _ in range(3):
        count.update(ids(0, 1000))
    assert len(count) == 1000
    assert count.exact
    assert count.relative_error == 0


def test_past_the_threshold_memory_stays_a_few_kb_and_the_error_within_bound() -> None:
    count = DistinctCount(exact_up_to=1000, precision=14)
    for start in range(0, 300_000, 1000):
        count.update(ids(start, start + 1000))
        count.update(ids(0, 500))  # a fleet that keeps reporting: no new ids
    assert not count.exact
    assert count.relative_error < 0.01
    # Four standard errors: fails by chance about once in 16,000 hash seeds.
    assert abs(len(count) - 300_000) <= 4 * count.relative_error * 300_000, len(count)
    assert count.sketch_bytes == 16 * 1024


def test_the_sketch_counts_small_sets_well_too() -> None:
    """Linear counting while registers are mostly empty: a switch at the threshold does not jump."""
    count = DistinctCount(exact_up_to=0)
    count.update(ids(0, 2000))
    assert abs(len(count) - 2000) <= 40
