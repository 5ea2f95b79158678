"""Transforms: check_range rejects or flags, convert_units converts (drop_duplicates is the file
sink's dedupe window now: tests/test_dedupe.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from gateway.config import CheckRangeStep, ConvertUnitsStep, StepConfig
from gateway.errors import REJECT_REASONS
from gateway.model import Reading
from gateway.transforms import CheckRange, ConvertUnits, Verdict, build_transform

NOW = 1_795_604_400.0
STEP = TypeAdapter(StepConfig)


def reading(
    metrics: dict[str, float] | None = None,
    *,
    device_id: str = "dev-1",
    seq: int | None = None,
    units: dict[str, str] | None = None,
) -> Reading:
    return Reading(
        device_id=device_id,
        ts=NOW,
        received_at=NOW,
        metrics={"temperature": 21.5} if metrics is None else metrics,
        seq=seq,
        units=units or {},
    )


class Rejected(Exception):
    """What `one` raises for a reading the step rejected."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def one(step: Any, r: Reading) -> Reading | None:
    """Run a batch step over one reading: the reading kept, None when dropped, or Rejected."""
    verdict = step([r])
    assert isinstance(verdict, Verdict)
    assert len(verdict.kept) + len(verdict.rejected) + verdict.dropped == 1, "each reading once"
    if verdict.rejected:
        [(rejected, reason, detail)] = verdict.rejected
        assert rejected is r
        raise Rejected(reason, detail)
    return verdict.kept[0] if verdict.kept else None


def check_range(**fields: Any) -> CheckRange:
    return CheckRange(CheckRangeStep(kind="check_range", metric="temperature", **fields))


def convert(from_unit: str, to_unit: str) -> ConvertUnits:
    return ConvertUnits(
        ConvertUnitsStep(
            kind="convert_units", metric="temperature", from_unit=from_unit, to_unit=to_unit
        )
    )


# --- build_transform ---


@pytest.mark.parametrize(
    ("step", "kind"),
    [
        ({"kind": "check_range", "metric": "t", "min": 0}, CheckRange),
        (
            {"kind": "convert_units", "metric": "t", "from_unit": "degF", "to_unit": "degC"},
            ConvertUnits,
        ),
    ],
)
def test_build_transform_makes_the_verb_its_step_names(step: dict[str, Any], kind: type) -> None:
    assert isinstance(build_transform(STEP.validate_python(step)), kind)


# --- check_range ---


def test_a_value_inside_the_range_passes_unchanged() -> None:
    r = reading({"temperature": 21.5})
    assert one(check_range(min=-40, max=85), r) is r
    assert r.flags is None


@pytest.mark.parametrize("value", [-40.0, 85.0])
def test_the_bounds_themselves_are_inside_the_range(value: float) -> None:
    assert one(check_range(min=-40, max=85), reading({"temperature": value})).flags is None


@pytest.mark.parametrize("value", [-40.5, 85.5, -1e300, 1e300])
def test_reject_raises_out_of_range_for_a_value_outside(value: float) -> None:
    with pytest.raises(Rejected) as caught:
        one(check_range(min=-40, max=85, action="reject"), reading({"temperature": value}))
    assert caught.value.reason == "out_of_range"
    assert caught.value.reason in REJECT_REASONS
    assert "temperature" in caught.value.detail


def test_flag_keeps_the_reading_and_marks_it_once() -> None:
    step = check_range(max=85, action="flag")
    r = reading({"temperature": 90.0, "humidity": 40.0})
    assert one(step, r) is r
    assert one(step, r) is r
    assert r.flags == ["temperature:out_of_range"]
    assert r.metrics == {"temperature": 90.0, "humidity": 40.0}


def test_a_reading_without_the_metric_passes() -> None:
    r = reading({"humidity": 400.0})
    assert one(check_range(min=0, max=100), r) is r


def test_an_open_bound_is_unlimited() -> None:
    assert one(check_range(min=0), reading({"temperature": 1e300})).flags is None
    assert one(check_range(max=0), reading({"temperature": -1e300})).flags is None
    with pytest.raises(Rejected):
        one(check_range(min=0), reading({"temperature": -0.1}))


def test_a_range_with_no_bounds_or_min_above_max_is_refused_by_its_config() -> None:
    with pytest.raises(ValueError, match="give min, max or both"):
        check_range()
    with pytest.raises(ValueError, match=r"min \(10\) is greater than max \(5\)"):
        check_range(min=10, max=5)


# --- convert_units ---


@pytest.mark.parametrize(
    ("from_unit", "to_unit", "value", "expected"),
    [
        ("degF", "degC", 212.0, 100.0),
        ("degF", "degC", -40.0, -40.0),
        ("degC", "degF", 37.0, 98.6),
        ("Cel", "degF", 0.0, 32.0),
        ("K", "degC", 273.15, 0.0),
        ("degC", "K", -273.15, 0.0),
        ("degF", "K", 32.0, 273.15),
        ("hPa", "Pa", 1013.25, 101325.0),
        ("Pa", "kPa", 101325.0, 101.325),
        ("kPa", "hPa", 1.0, 10.0),
        ("m/s", "km/h", 10.0, 36.0),
        ("km/h", "m/s", 36.0, 10.0),
    ],
)
def test_a_value_is_converted_and_its_unit_recorded(
    from_unit: str, to_unit: str, value: float, expected: float
) -> None:
    r = reading({"temperature": value, "other": value})
    assert one(convert(from_unit, to_unit), r) is r
    assert r.metrics["temperature"] == pytest.approx(expected, abs=1e-9)
    assert r.units == {"temperature": to_unit}
    assert r.metrics["other"] == value, "only the configured metric changes"


def test_a_reading_already_in_from_unit_or_its_alias_is_converted() -> None:
    for unit in ("degC", "Cel"):
        r = reading({"temperature": 100.0}, units={"temperature": unit})
        one(convert("degC", "degF"), r)
        assert (r.metrics["temperature"], r.units["temperature"]) == (pytest.approx(212.0), "degF")


def test_a_reading_in_another_unit_is_left_alone() -> None:
    r = reading({"temperature": 300.0}, units={"temperature": "K"})
    one(convert("degF", "degC"), r)
    assert r.metrics == {"temperature": 300.0}
    assert r.units == {"temperature": "K"}


def test_converting_twice_does_not_convert_again() -> None:
    step = convert("degF", "degC")
    r = reading({"temperature": 212.0})
    one(step, one(step, r))  # type: ignore[arg-type]
    assert r.metrics["temperature"] == pytest.approx(100.0)


def test_a_reading_without_the_metric_passes_unchanged() -> None:
    r = reading({"humidity": 40.0})
    assert one(convert("degF", "degC"), r) is r
    assert r.units == {}


def test_a_result_too_large_for_a_float_is_rejected() -> None:
    with pytest.raises(Rejected) as caught:
        one(convert("kPa", "Pa"), reading({"temperature": 1.7e308}))
    assert caught.value.reason == "invalid_value"


@pytest.mark.parametrize(
    ("from_unit", "to_unit", "message"),
    [
        ("degX", "degC", "unknown from_unit 'degX'"),
        ("degC", "furlong", "unknown to_unit 'furlong'"),
        ("degC", "Pa", "cannot convert temperature"),
        ("km/h", "hPa", "cannot convert speed"),
    ],
)
def test_an_unknown_or_mismatched_unit_pair_is_refused_at_build_time(
    from_unit: str, to_unit: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        convert(from_unit, to_unit)


@given(
    value=st.floats(-1e6, 1e6),
    pair=st.sampled_from([("degF", "degC"), ("K", "degF"), ("hPa", "kPa"), ("m/s", "km/h")]),
)
def test_converting_there_and_back_gives_the_value_back(
    value: float, pair: tuple[str, str]
) -> None:
    r = reading({"temperature": value})
    one(convert(*pair), r)
    one(convert(pair[1], pair[0]), r)
    assert r.metrics["temperature"] == pytest.approx(value, rel=1e-9, abs=1e-9)
    assert r.units["temperature"] == pair[0]


# --- batches ---


def test_a_batch_keeps_its_order_and_each_reading_lands_in_exactly_one_outcome() -> None:
    values = [20.0, 99.0, 21.0, -99.0, 22.0]
    batch = [reading({"temperature": v}, seq=n) for n, v in enumerate(values)]
    verdict = check_range(min=-40, max=85)(batch)
    assert [r.seq for r in verdict.kept] == [0, 2, 4]
    assert [(r.seq, reason) for r, reason, _ in verdict.rejected] == [
        (1, "out_of_range"),
        (3, "out_of_range"),
    ]
    assert verdict.dropped == 0
