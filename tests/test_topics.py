"""TopicTemplate: names the levels of a received topic, refuses any other shape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.topics import (
    TopicTemplate,
    derive_filter,
    filter_matches,
    filter_mismatch,
    filter_wider,
    safe_name_pattern,
)

TEMPLATE = "sensors/{site}/{device_id}/telemetry"

safe_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def reason(template: TopicTemplate, topic: str) -> str:
    with pytest.raises(DecodeError) as caught:
        template.match(topic)
    return caught.value.reason


def test_match_names_each_field_level() -> None:
    fields = TopicTemplate(TEMPLATE).match("sensors/plant-1/dev-0042/telemetry")
    assert fields == {"site": "plant-1", "device_id": "dev-0042"}


def test_fields_lists_the_template_fields_in_order() -> None:
    assert TopicTemplate("a/{metric}/{device_id}/{site}").fields == ("metric", "device_id", "site")


def test_a_template_of_literals_matches_only_itself() -> None:
    template = TopicTemplate("plant/telemetry")
    assert template.match("plant/telemetry") == {}
    assert reason(template, "plant/telemetry2") == "topic_mismatch"


@pytest.mark.parametrize(
    "topic",
    [
        "sensors/plant-1/dev-0042",  # too few levels
        "sensors/plant-1/dev-0042/telemetry/extra",  # too many
        "sensors/plant-1/dev-0042/status",  # other literal
        "Sensors/plant-1/dev-0042/telemetry",  # literals are case-sensitive
        "/sensors/plant-1/dev-0042/telemetry",
        "",
    ],
)
def test_a_topic_of_another_shape_is_a_topic_mismatch(topic: str) -> None:
    assert reason(TopicTemplate(TEMPLATE), topic) == "topic_mismatch"


@pytest.mark.parametrize(
    "site", ["", ".hidden", "-x", "a b", "a+b", "ä", "x" * 65, "a\nb", "a\x00", "..", "a:b"]
)
def test_an_empty_or_unsafe_field_value_is_a_topic_mismatch(site: str) -> None:
    assert reason(TopicTemplate(TEMPLATE), f"sensors/{site}/dev-0042/telemetry") == "topic_mismatch"


def test_a_field_value_of_64_characters_is_accepted() -> None:
    site = "s" * 64
    assert TopicTemplate(TEMPLATE).match(f"sensors/{site}/d/telemetry")["site"] == site


@pytest.mark.parametrize("device_id", ["", "dev 1", "..", ".dev", "dév", "dev-1\n", "dev+1"])
def test_an_unsafe_device_id_is_an_invalid_device_id(device_id: str) -> None:
    assert reason(TopicTemplate("t/{device_id}"), f"t/{device_id}") == "invalid_device_id"


def test_device_id_length_is_bounded_by_the_configured_maximum() -> None:
    template = TopicTemplate("t/{device_id}", max_device_id_length=8)
    assert template.match("t/12345678") == {"device_id": "12345678"}
    assert reason(template, "t/123456789") == "invalid_device_id"


def test_error_detail_quotes_network_text_only_truncated() -> None:
    template = TopicTemplate(TEMPLATE)
    for topic in ("x" * 100_000, f"sensors/{'y' * 100_000}/d/telemetry", "a/" * 50_000):
        with pytest.raises(DecodeError) as caught:
            template.match(topic)
        assert len(caught.value.detail) < 400


@pytest.mark.parametrize(
    "template",
    [
        *("a/{Site}", "a/{site", "a/x{site}", "a/#/b", "a/{site}/{site}", "a/{}", "a/{s-1}"),
        *("a/b+", "a/#x", "#/a"),
    ],
)
def test_a_template_level_that_is_not_a_literal_or_whole_field_is_refused(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        TopicTemplate(template)


def test_safe_name_pattern_refuses_a_length_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        safe_name_pattern(0)


@given(site=safe_ids, device_id=safe_ids)
def test_any_safe_values_come_back_as_fields(site: str, device_id: str) -> None:
    fields = TopicTemplate(TEMPLATE).match(f"sensors/{site}/{device_id}/telemetry")
    assert fields == {"site": site, "device_id": device_id}


@given(topic=st.text(max_size=200))
def test_any_topic_gives_fields_or_a_decode_error(topic: str) -> None:
    template = TopicTemplate(TEMPLATE)
    try:
        fields = template.match(topic)
    except DecodeError as exc:
        refused = exc.reason
    else:
        assert "/".join(("sensors", fields["site"], fields["device_id"], "telemetry")) == topic
        return
    assert refused in ("topic_mismatch", "invalid_device_id")


def test_a_plus_level_takes_any_one_level_and_keeps_nothing() -> None:
    template = TopicTemplate("v3/+/devices/{device_id}/up")
    assert template.match("v3/app1@ttn/devices/dev-1/up") == {"device_id": "dev-1"}
    assert reason(template, "v3/devices/dev-1/up") == "topic_mismatch"


def test_a_hash_tail_takes_any_number_of_levels_none_included() -> None:
    template = TopicTemplate("home/{room}/#")
    assert template.match("home/kitchen") == {"room": "kitchen"}
    assert template.match("home/kitchen/thermo/1") == {"room": "kitchen"}
    assert reason(template, "home") == "topic_mismatch"
    assert reason(template, "office/kitchen/x") == "topic_mismatch"


def test_the_filter_follows_from_the_template() -> None:
    assert derive_filter("sensors/{site}/{device_id}/telemetry") == "sensors/+/+/telemetry"
    assert derive_filter("v3/+/devices/{device_id}/up") == "v3/+/devices/+/up"
    assert TopicTemplate("home/{room}/#").filter == "home/+/#"


@pytest.mark.parametrize(
    ("topic_filter", "template"),
    [
        ("sensors/+/+/telemetry", "sensors/{site}/{device_id}/telemetry"),
        ("sensors/site-a/+/telemetry", "sensors/{site}/{device_id}/telemetry"),  # narrower
        ("$share/g/sensors/+/+/telemetry", "sensors/{site}/{device_id}/telemetry"),
        ("home/#", "home/#"),
        ("home/+/temp", "home/#"),
        ("home", "home/#"),  # `home/#` matches `home` too
        ("zigbee2mqtt/+", "zigbee2mqtt/{device_id}"),
    ],
)
def test_a_filter_delivering_only_readable_topics_is_accepted(
    topic_filter: str, template: str
) -> None:
    assert filter_mismatch(topic_filter, template) is None
    assert filter_wider(topic_filter, template) is None


@pytest.mark.parametrize(
    ("topic_filter", "template"),
    [
        ("home/#", "sensors/{site}/{device_id}/telemetry"),
        ("a/b", "a/c"),
        ("a/+/b", "a/{x}"),
        ("a/b/#", "a/c/#"),
    ],
)
def test_a_filter_that_cannot_match_its_template_is_named_with_both(
    topic_filter: str, template: str
) -> None:
    problem = filter_mismatch(topic_filter, template)
    assert problem == (
        f"filter {topic_filter!r} and template {template!r} cannot match the same topic: no "
        "message the filter delivers can be read"
    )
    assert filter_wider(topic_filter, template) is None


@pytest.mark.parametrize(
    ("topic_filter", "template", "words"),
    [
        ("zigbee2mqtt/#", "zigbee2mqtt/{device_id}", "'#' delivers topics of any shape"),
        ("sensors/+/+/+", "sensors/{site}/{device_id}/telemetry", "the template only"),
        ("t/#", "t/{site}/{device_id}/telemetry", "'#' delivers topics of any shape"),
    ],
)
def test_a_filter_wider_than_its_template_is_warned_about_naming_both(
    topic_filter: str, template: str, words: str
) -> None:
    assert filter_mismatch(topic_filter, template) is None
    warning = filter_wider(topic_filter, template)
    assert warning is not None
    assert words in warning
    assert repr(topic_filter) in warning
    assert repr(template) in warning


level = st.sampled_from(["a", "b", "+", "{x}", "#"])
topic_level = st.sampled_from(["a", "b", "c"])


@given(
    shape=st.lists(level, min_size=1, max_size=4),
    wanted=st.lists(st.sampled_from(["a", "b", "+", "#"]), min_size=1, max_size=4),
    topic=st.lists(topic_level, min_size=1, max_size=5),
)
def test_when_no_problem_is_found_every_topic_the_filter_delivers_has_the_template_shape(
    shape: list[str], wanted: list[str], topic: list[str]
) -> None:
    if "#" in shape[:-1] or "#" in wanted[:-1] or shape.count("{x}") > 1:
        return
    template, topic_filter, name = "/".join(shape), "/".join(wanted), "/".join(topic)
    readable = filter_mismatch(topic_filter, template) is None
    if (
        readable
        and filter_wider(topic_filter, template) is None
        and filter_matches(topic_filter, name)
    ):
        TopicTemplate(template).match(name)  # no DecodeError
