"""The wire format of one event, call-site validation, and value conversion."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import re
import uuid
from typing import Any

import pytest

from klime_mp import KlimeClient, __version__, events

EVENT_LIMIT_BYTES = 200 * 1024  # the API's limit, written here, not read from events.py

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def encoded(body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(events.serialize(body))
    return result


def test_track_has_the_official_keys_and_omits_unset_ones() -> None:
    event = encoded(
        events.build_track("Report Generated", {"report_type": "revenue"}, "usr_1", None)
    )
    assert list(event) == [
        "type",
        "messageId",
        "timestamp",
        "event",
        "userId",
        "properties",
        "context",
    ]
    assert event["type"] == "track"
    assert event["properties"] == {"report_type": "revenue"}
    assert uuid.UUID(event["messageId"]).version == 4
    assert TIMESTAMP.match(event["timestamp"])
    assert event["context"] == {"library": {"name": "klime_mp", "version": __version__}}


def test_identify_has_the_official_keys_and_values() -> None:
    event = encoded(events.build_identify("usr_1", {"email": "jane@acme.com"}))
    assert list(event) == ["type", "messageId", "timestamp", "userId", "traits", "context"]
    assert (event["type"], event["userId"], event["traits"]) == (
        "identify",
        "usr_1",
        {"email": "jane@acme.com"},
    )
    assert uuid.UUID(event["messageId"]).version == 4
    assert TIMESTAMP.match(event["timestamp"])
    assert event["context"] == {"library": {"name": "klime_mp", "version": __version__}}


@pytest.mark.parametrize("user_id", [None, "usr_1"])
def test_group_has_the_official_keys_and_values(user_id: str | None) -> None:
    event = encoded(events.build_group("org_1", {"plan": "enterprise"}, user_id))
    linked = ["userId"] if user_id else []  # the official SDK: userId before groupId
    keys = ["type", "messageId", "timestamp", *linked, "groupId", "traits", "context"]
    assert list(event) == keys
    assert (event["type"], event["groupId"], event["traits"]) == (
        "group",
        "org_1",
        {"plan": "enterprise"},
    )
    assert event.get("userId") == user_id
    assert uuid.UUID(event["messageId"]).version == 4
    assert TIMESTAMP.match(event["timestamp"])
    assert event["context"] == {"library": {"name": "klime_mp", "version": __version__}}


def test_group_traits_that_are_not_a_mapping_are_named() -> None:
    with pytest.raises(TypeError, match=r"^traits must be a mapping"):
        events.build_group("org_1", ["vip"], None)  # type: ignore[arg-type]


def test_the_pure_python_encoder_writes_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Interpreters without json's C accelerator (PyPy) take the fallback path.
    value = {
        "é": [1, 2.5, None, True],
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "d": decimal.Decimal("1.5"),
    }
    expected = '{"é":[1,2.5,null,true],"when":"2026-01-02T03:04:05.000Z","d":1.5}'
    assert events._encode(value) == expected
    built = events._make_encoder()  # the C path, built again (the module's is built at import)
    assert built(value) == expected
    assert built({"b": 1, "a": 2}) == '{"b":1,"a":2}'  # call order kept, not sorted
    with pytest.raises(ValueError):
        built({"x": float("nan")})
    with pytest.raises(TypeError):
        built({(1, 2): "x"})  # keys are never skipped silently
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    fallback = events._make_encoder()
    assert fallback(value) == expected
    with pytest.raises(ValueError):
        fallback({"x": float("nan")})


def test_group_only_track_is_an_organisation_event() -> None:
    event = encoded(events.build_track("Events Received", None, None, "org_1"))
    assert event["groupId"] == "org_1" and "userId" not in event
    assert event["properties"] == {}


def test_identify_and_group_send_traits_even_when_empty() -> None:
    identify = encoded(events.build_identify("usr_1", None))
    assert identify["traits"] == {} and identify["userId"] == "usr_1"
    group = encoded(events.build_group("org_1", {"name": "Acme"}, "usr_1"))
    assert (group["groupId"], group["userId"], group["traits"]) == (
        "org_1",
        "usr_1",
        {"name": "Acme"},
    )
    assert "userId" not in encoded(events.build_group("org_1", None, None))


def test_message_ids_are_unique_and_fixed_at_call_time() -> None:
    ids = {events.build_identify("u", None)["messageId"] for _ in range(1000)}
    assert len(ids) == 1000


def test_integer_ids_are_sent_as_text() -> None:
    event = encoded(events.build_track("Signed In", None, 42, 7))
    assert (event["userId"], event["groupId"]) == ("42", "7")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: events.build_track("", None, "u", None),
            ValueError,
            "event must be a non-empty string",
        ),
        (
            lambda: events.build_track("  ", None, "u", None),
            ValueError,
            "event must be a non-empty",
        ),
        (lambda: events.build_track(None, None, "u", None), TypeError, "event must be a non-empty"),
        (
            lambda: events.build_track("A", None, None, None),
            ValueError,
            "needs user_id or group_id",
        ),
        (
            lambda: events.build_track("A", [1], "u", None),
            TypeError,
            "properties must be a mapping",
        ),
        (
            lambda: events.build_track("A", None, "", None),
            ValueError,
            "user_id must be a non-empty",
        ),
        (
            lambda: events.build_track("A", None, None, 1.5),
            TypeError,
            "group_id must be a string or int",
        ),
        (
            lambda: events.build_track("A", None, True, None),
            TypeError,
            "user_id must be a string or int",
        ),
        (lambda: events.build_identify(None, None), ValueError, "user_id is required"),
        (lambda: events.build_identify("u", "email"), TypeError, "traits must be a mapping"),
        (lambda: events.build_group(None, None, None), ValueError, "group_id is required"),
        (lambda: events.build_group("g", None, b"u"), TypeError, "user_id must be a string or int"),
    ],
)
def test_bad_input_raises_at_the_call_site_naming_the_argument(
    call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


class Plan(enum.Enum):
    PRO = "pro"


def test_well_known_types_are_converted() -> None:
    aware = dt.datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    props = {
        "aware": aware,
        "naive": dt.datetime(2026, 1, 2, 3, 4, 5),
        "day": dt.date(2026, 1, 2),
        "price": decimal.Decimal("9.99"),
        "id": uuid.UUID(int=1),
        "plan": Plan.PRO,
        "tags": {"b", "a"},
        "pair": (1, 2),
        "nested": {"when": [dt.date(2026, 1, 3)]},
    }
    sent = encoded(events.build_track("A", props, "u", None))["properties"]
    assert sent == {
        "aware": "2026-11-22T08:00:00.123Z",
        "naive": "2026-01-02T03:04:05.000",
        "day": "2026-01-02",
        "price": 9.99,
        "id": "00000000-0000-0000-0000-000000000001",
        "plan": "pro",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "nested": {"when": ["2026-01-03"]},
    }


def cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"a": []}
    value["a"].append(value)
    return value


@pytest.mark.parametrize(
    ("properties", "error", "message"),
    [
        ({"a": {"b": [1, object()]}}, TypeError, r"properties\.a\.b\[1\]: object cannot be sent"),
        ({"blob": b"\x00"}, TypeError, r"properties\.blob: bytes cannot be sent"),
        ({"ratio": float("nan")}, ValueError, r"properties\.ratio is nan"),
        ({"big": float("inf")}, ValueError, r"properties\.big is inf"),
        ({"d": decimal.Decimal("NaN")}, ValueError, r"properties\.d: Decimal cannot be sent"),
        ({"text": "\udc80"}, ValueError, r"properties\.text contains a lone surrogate"),
        (cyclic(), ValueError, r"properties\.a\[0\] contains itself"),
        ({(1, 2): "x"}, TypeError, r"properties has a key of type tuple"),
    ],
)
def test_unencodable_values_name_the_key_path(
    properties: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        events.serialize(events.build_track("A", properties, "u", None))


def test_deep_nesting_is_rejected_with_its_depth() -> None:
    value: Any = 1
    for _ in range(2000):
        value = {"x": value}
    with pytest.raises(ValueError, match="nested more than"):
        events.serialize(events.build_track("A", value, "u", None))


def test_each_event_is_encoded_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = events._encode
    monkeypatch.setattr(events, "_encode", lambda body: calls.append(1) or real(body))
    client = KlimeClient("key", send=False)
    client.track("A", {"x": 1}, user_id="u")
    client.identify("u", {"email": "a@b.c"})
    client.group("g", None, user_id="u")
    assert len(calls) == 3


def test_oversized_event_is_dropped_counted_and_reported_not_raised() -> None:
    reported: list[tuple[BaseException, list[dict[str, Any]]]] = []
    client = KlimeClient("key", send=False, on_error=lambda e, evs: reported.append((e, evs)))
    client.track("Big", {"blob": "x" * EVENT_LIMIT_BYTES}, user_id="u")
    assert client.stats().dropped == {"oversized": 1}
    assert client.stats().enqueued == 0
    ((error, dropped),) = reported
    assert isinstance(error, ValueError) and "at most 204800" in str(error)
    assert dropped[0]["event"] == "Big"


def test_oversized_sync_event_raises_value_error() -> None:
    client = KlimeClient("key", send=False)
    with pytest.raises(ValueError, match="bytes serialized; the Klime API accepts at most"):
        client.track_sync("Big", {"blob": "x" * EVENT_LIMIT_BYTES}, user_id="u")


def test_message_ids_are_rfc_4122_version_4() -> None:
    for _ in range(200):
        text = events.new_message_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


def test_timestamp_is_now_in_utc() -> None:
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(milliseconds=1)
    stamp = events.timestamp_now()
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(milliseconds=1)
    parsed = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    assert before <= parsed <= after


@pytest.mark.parametrize("depth", [65, 100, 900])
def test_nesting_beyond_64_levels_is_rejected_on_every_python(depth: int) -> None:
    # json alone allows ~1000 levels on 3.11 and far more on 3.12+, whose events a
    # 3.11 server would then refuse whole: the limit must not depend on the version.
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    with pytest.raises(ValueError, match="nested more than 64 levels deep"):
        events.serialize(events.build_track("A", value, "u", None))


def test_wide_events_with_many_brackets_but_little_depth_are_accepted() -> None:
    items = [{"sku": n, "tags": [n]} for n in range(200)]
    encoded(events.build_track("Order Placed", {"items": items}, "u", None))
    value: Any = 1
    for _ in range(64):
        value = {"x": value}
    encoded(events.build_track("A", value, "u", None))  # exactly the limit


def test_a_raising_on_error_for_an_oversized_event_never_reaches_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(error: BaseException, dropped: list[dict[str, Any]]) -> None:
        raise RuntimeError("boom")

    client = KlimeClient("key", send=False, on_error=explode)
    client.track("Big", {"blob": "x" * EVENT_LIMIT_BYTES}, user_id="u")  # must not raise
    assert client.stats().dropped == {"oversized": 1}
    assert any("on_error callback raised" in r.getMessage() for r in caplog.records)


# -- encode_track / encode_identify / encode_group: the same bytes, the same errors ----


def _both_ways(call: tuple[Any, ...]) -> tuple[Any, Any]:
    """What the dict path and the byte path make of one call: bytes, or (type, message)."""
    kind, *args = call
    build, encode = {
        "track": (events.build_track, events.encode_track),
        "identify": (events.build_identify, events.encode_identify),
        "group": (events.build_group, events.encode_group),
    }[kind]
    results = []
    for make in (lambda: events.serialize(build(*args)), lambda: encode(*args)):
        try:
            results.append(make())
        except (TypeError, ValueError) as exc:
            results.append((type(exc), str(exc)))
    return results[0], results[1]


def test_encoders_give_the_bytes_and_errors_of_serialize(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypothesis import HealthCheck, given, settings

    from tests.test_fuzz import CALLS

    monkeypatch.setattr(events, "new_message_id", lambda: "0b7c7b1e-54d5-4a0e-9b39-4f0e9f0c2d11")
    monkeypatch.setattr(events, "timestamp_now", lambda: "2026-12-02T03:04:05.678Z")

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(call=CALLS)
    def run(call: tuple[Any, ...]) -> None:
        by_dict, by_bytes = _both_ways(call)
        assert by_bytes == by_dict

    run()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            ("track", "Signed Up", {"plan": "pro", "n": 3, "r": 1e-07}, "u1", 7),
            '{"type":"track","messageId":"M","timestamp":"T","event":"Signed Up",'
            '"userId":"u1","groupId":"7","properties":{"plan":"pro","n":3,"r":1e-07},',
        ),
        (
            ("identify", "u\u2028é", None),
            '{"type":"identify","messageId":"M","timestamp":"T","userId":"u\u2028é","traits":{},',
        ),
        (
            ("group", "g", {"k": [1, None]}, "u"),
            '{"type":"group","messageId":"M","timestamp":"T","userId":"u","groupId":"g",'
            '"traits":{"k":[1,null]},',
        ),
    ],
)
def test_encoded_events_are_compact_utf8_json_in_the_official_key_order(
    call: tuple[Any, ...], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "new_message_id", lambda: "M")
    monkeypatch.setattr(events, "timestamp_now", lambda: "T")
    by_dict, by_bytes = _both_ways(call)
    tail = f'"context":{{"library":{{"name":"klime_mp","version":"{__version__}"}}}}}}'
    assert by_bytes == (expected + tail).encode("utf-8") == by_dict


@pytest.mark.parametrize("depth", [64, 65, 900])
def test_encoders_keep_the_depth_limit(depth: int) -> None:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    if depth <= 64:
        assert json.loads(events.encode_track("A", value, "u", None))["properties"] == value
    else:
        with pytest.raises(ValueError, match=r"properties.* is nested more than 64 levels deep"):
            events.encode_track("A", value, "u", None)
        with pytest.raises(ValueError, match=r"traits.* is nested more than 64 levels deep"):
            events.encode_group("g", value, None)


def test_timestamps_have_the_milliseconds_of_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    for now, expected in [
        (1764644645.0071, "2025-12-02T03:04:05.007Z"),
        (1764644645.999, "2025-12-02T03:04:05.999Z"),
        (1764644646.0, "2025-12-02T03:04:06.000Z"),
        (0.5, "1970-01-01T00:00:00.500Z"),
    ]:
        monkeypatch.setattr(events.time, "time", lambda now=now: now)
        assert events.timestamp_now() == expected


@pytest.mark.parametrize("wrap", [lambda v: [v], lambda v: (v,), lambda v: {"x": v}])
def test_the_64_level_limit_counts_lists_and_tuples_like_mappings(wrap: Any) -> None:
    value: Any = 1
    for _ in range(63):  # properties itself is level 1: 64 in all
        value = wrap(value)
    encoded(events.build_track("A", {"x": value}, "u", None))
    with pytest.raises(ValueError, match="nested more than 64 levels deep"):
        events.serialize(events.build_track("A", {"x": wrap(value)}, "u", None))


def test_milliseconds_are_truncated_not_rounded() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=dt.timezone.utc)
    assert events.format_datetime(when) == "2026-01-02T03:04:05.999Z"
    when = when.replace(microsecond=1_000)
    assert events.format_datetime(when) == "2026-01-02T03:04:05.001Z"


def test_a_lone_surrogate_in_a_key_names_the_path() -> None:
    with pytest.raises(ValueError, match=r"properties\.a contains a lone surrogate"):
        events.serialize(events.build_track("A", {"a": {"\udc80": 1}}, "u", None))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: events.build_track("\udc80", None, "u", None), "event contains a lone surrogate"),
        (lambda: events.build_track("A", None, "\udc80", None), "user_id contains a lone"),
        (lambda: events.build_track("A", None, None, "\udc80"), "group_id contains a lone"),
        (lambda: events.build_identify("u", {"t": "\udc80"}), "traits.t contains a lone"),
        (
            lambda: events.build_track("A", {"d": decimal.Decimal("Infinity")}, "u", None),
            "properties.d: Decimal cannot be sent as JSON (non-finite Decimal)",
        ),
        (
            lambda: events.build_track("A", {"s": {1: {2: float("nan")}}}, "u", None),
            "properties.s.1.2 is nan: not valid JSON",
        ),
        (
            lambda: events.build_track("A", {"n": [None, True, 10**5000]}, "u", None),
            "properties.n[2] is an int too large to encode",
        ),
    ],
)
def test_the_refusal_names_the_argument_or_key_path_exactly(build: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        events.serialize(build())
    assert str(raised.value).startswith(message)


def test_an_anonymous_track_says_why() -> None:
    with pytest.raises(ValueError) as raised:
        events.build_track("A", None, None, None)
    assert str(raised.value) == "track() needs user_id or group_id: Klime has no anonymous events"


SHARED = [1]  # one list referenced twice: shared, not a cycle


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (
            lambda: events.build_track("A", {"a": SHARED, "b": SHARED, "c": object()}, "u", None),
            TypeError,
            "properties.c: object cannot be sent as JSON (object is not JSON serializable)",
        ),
        (
            lambda: events.build_track("A", {"s": frozenset({float("nan")})}, "u", None),
            ValueError,
            "properties.s[0] is nan: not valid JSON",
        ),
        (
            lambda: events.build_track(5, None, "u", None),
            TypeError,
            "event must be a non-empty string, got int",
        ),
        (
            lambda: events.build_track("", None, "u", None),
            ValueError,
            "event must be a non-empty string",
        ),
        (
            lambda: events.build_track("A", None, b"u", None),
            TypeError,
            "user_id must be a string or int, got bytes",
        ),
        (
            lambda: events.build_track("A", "x", "u", None),
            TypeError,
            "properties must be a mapping (dict) or None, got str",
        ),
        (
            lambda: events.build_identify(b"u", None),  # a required id
            TypeError,
            "user_id must be a string or int, got bytes",
        ),
        (
            lambda: events.build_track("A", None, 10**5000, None),
            ValueError,
            "user_id is an int too large to send as text",
        ),
    ],
)
def test_misuse_messages_are_exact(build: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        events.serialize(build())
    assert str(raised.value) == message


def test_a_mapping_that_is_not_a_dict_is_sent_as_an_object() -> None:
    import types

    properties = {"m": types.MappingProxyType({"a": 1})}
    assert encoded(events.build_track("A", properties, "u", None))["properties"] == {"m": {"a": 1}}


def test_a_set_of_mixed_types_is_sent_as_a_list_in_any_order() -> None:
    sent = encoded(events.build_track("A", {"mixed": {1, "a"}}, "u", None))["properties"]
    assert sorted(sent["mixed"], key=str) == [1, "a"]


@pytest.mark.parametrize("key", [float("nan"), float("inf")])
def test_a_non_finite_float_key_is_refused_naming_the_argument(key: float) -> None:
    # json writes float keys as text, but refuses NaN and infinity like values (the fuzz
    # test found the bare "Out of range float values" message, which named nothing).
    client = KlimeClient("key", endpoint="http://127.0.0.1:9")
    try:
        with pytest.raises(ValueError, match=r"properties has a key (nan|inf): not valid JSON"):
            client.track("Float Key", {key: 1}, user_id="u1")
    finally:
        client.shutdown()
