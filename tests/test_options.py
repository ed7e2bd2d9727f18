"""Constructor validation: every bad option fails at construction, naming the option."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from klime_mp import KlimeClient


def make(**options: Any) -> KlimeClient:
    options.setdefault("write_key", "key")
    return KlimeClient(**options)


def test_defaults_match_the_official_sdk() -> None:
    options = make().options
    assert options.endpoint == "https://i.klime.com"
    assert options.flush_interval == 2.0
    # Ours on purpose: the API's limit, not the official 20, so a worker that idles
    # between requests pays for one POST per 100 events (docs/performance.md).
    assert options.max_batch_size == 100
    # Ours on purpose: Segment's and PostHog's 10,000, not the official 1,000, which
    # lost 94 % of a 20,000-event burst (tests/test_outage.py).
    assert options.max_queue_size == 10_000
    assert options.spool_dir is None  # the spool is opt-in
    assert options.retry_max_attempts == 5
    assert options.retry_initial_delay == 1.0
    assert options.flush_on_shutdown is True
    assert options.logger is logging.getLogger("klime")
    assert (options.timeout, options.shutdown_timeout, options.send) == (10.0, 5.0, True)


def test_none_means_the_default() -> None:
    options = make(max_batch_size=None, flush_interval=None).options
    assert (options.max_batch_size, options.flush_interval) == (100, 2.0)


def test_write_key_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLIME_WRITE_KEY", "from-env")
    assert KlimeClient().options.write_key == "from-env"


def test_missing_write_key_names_the_argument_and_the_variable() -> None:
    with pytest.raises(ValueError, match=r"write_key is required.*KLIME_WRITE_KEY"):
        KlimeClient()


def test_endpoint_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLIME_ENDPOINT", "http://127.0.0.1:8800/")
    assert make().options.endpoint == "http://127.0.0.1:8800"


@pytest.mark.parametrize(
    ("option", "value", "error", "message"),
    [
        ("write_key", "  ", ValueError, "write_key must not be empty"),
        ("write_key", 42, TypeError, "write_key must be a string"),
        ("endpoint", "i.klime.com", ValueError, "endpoint must be an http:// or https:// URL"),
        ("endpoint", "ftp://i.klime.com", ValueError, "endpoint must be an http"),
        ("flush_interval", 0, ValueError, "flush_interval must be a positive"),
        ("flush_interval", -5, ValueError, "flush_interval must be a positive"),
        ("flush_interval", "2000", TypeError, "flush_interval must be a number"),
        ("max_batch_size", 0, ValueError, "max_batch_size must be positive"),
        ("max_batch_size", 101, ValueError, "max_batch_size must be at most 100"),
        ("max_batch_size", 2.5, TypeError, "max_batch_size must be an int"),
        ("max_batch_size", True, TypeError, "max_batch_size must be an int"),
        ("max_queue_size", -1, ValueError, "max_queue_size must be positive"),
        ("retry_max_attempts", 0, ValueError, "retry_max_attempts must be positive"),
        ("retry_initial_delay", 0, ValueError, "retry_initial_delay must be a positive"),
        ("flush_on_shutdown", "yes", TypeError, "flush_on_shutdown must be a bool"),
        ("logger", "klime", TypeError, "logger must be a logging.Logger"),
        ("on_error", "print", TypeError, "on_error must be callable"),
        ("on_success", 1, TypeError, "on_success must be callable"),
        ("timeout", 0, ValueError, "timeout must be a positive, finite number"),
        ("timeout", float("nan"), ValueError, "timeout must be a positive, finite number"),
        ("shutdown_timeout", float("inf"), ValueError, "shutdown_timeout must be a positive"),
        ("send", 1, TypeError, "send must be a bool"),
        ("sync_mode", "no", TypeError, "sync_mode must be a bool"),
    ],
)
def test_invalid_option_is_rejected_by_name(
    option: str, value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make(**{option: value})


def test_the_write_key_never_appears_in_reprs() -> None:
    client = make(write_key="sk_live_secret")
    assert "sk_live_secret" not in repr(client)
    assert "sk_live_secret" not in repr(client.options)


def test_constructing_a_client_starts_no_thread(collector: Any) -> None:
    import threading

    before = threading.active_count()
    client = make(endpoint=collector.url)
    assert threading.active_count() == before
    assert client.queue_size() == 0


@pytest.mark.parametrize(
    ("endpoint", "warned"),
    [
        ("http://analytics.example.com", True),
        ("http://10.0.0.5:8800", True),
        ("https://i.klime.com", False),
        ("http://127.0.0.1:8800", False),
        ("http://localhost:8800", False),
        ("http://[::1]:8800", False),
    ],
)
def test_plain_http_to_another_machine_is_warned_about(
    endpoint: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    make(endpoint=endpoint, write_key="sk_secret")
    messages = [r.getMessage() for r in caplog.records]
    assert any("plain http" in m for m in messages) == warned
    assert not any("sk_secret" in m for m in messages)


def test_spool_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("KLIME_SPOOL_DIR", str(tmp_path))
    assert make().options.spool_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"spool_dir": 42}, TypeError, "spool_dir must be a path"),
        ({"spool_dir": "  "}, ValueError, "spool_dir must be a non-empty path"),
        ({"spool_max_bytes": 1000}, ValueError, "spool_max_bytes must be at least"),
        ({"spool_max_bytes": 2.5}, TypeError, "spool_max_bytes must be an int"),
    ],
)
def test_bad_spool_options_are_refused_by_name(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make(**options)


@pytest.mark.parametrize("key", ["!", "~", "sk_live_!~09AZaz"])
def test_write_key_of_printable_ascii_is_accepted(key: str) -> None:
    assert make(write_key=key).options.write_key == key


@pytest.mark.parametrize("key", ["sk live", "sk_live\n", "sk_\x7f", "sk_é"])
def test_write_key_that_cannot_go_into_a_header_is_refused_without_quoting_it(key: str) -> None:
    with pytest.raises(ValueError) as raised:
        make(write_key=key)
    assert str(raised.value) == (
        "write_key must be printable ASCII without spaces (a trailing newline from a file "
        "or variable?)"
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("write_key", 42, "write_key must be a string, got int"),
        ("flush_on_shutdown", "yes", "flush_on_shutdown must be a bool, got str"),
        ("on_error", "print", "on_error must be callable, got str"),
        ("write_key", "  ", "write_key must not be empty"),
        ("endpoint", 8800, "endpoint must be a string, got int"),
        ("max_batch_size", 2.5, "max_batch_size must be an int, got float"),
        ("timeout", "10", "timeout must be a number, got str"),
        ("logger", "klime", "logger must be a logging.Logger, got str"),
    ],
)
def test_misuse_messages_name_the_option_and_the_type_given(
    option: str, value: Any, message: str
) -> None:
    with pytest.raises((TypeError, ValueError)) as raised:
        make(**{option: value})
    assert str(raised.value) == message


def test_the_smallest_and_largest_values_are_accepted() -> None:
    options = make(max_batch_size=100, max_queue_size=1, retry_max_attempts=1).options
    assert (options.max_batch_size, options.max_queue_size, options.retry_max_attempts) == (
        100,
        1,
        1,
    )
    options = make(max_batch_size=1, timeout=0.5, shutdown_timeout=0.25, flush_interval=1).options
    assert (options.max_batch_size, options.timeout, options.shutdown_timeout) == (1, 0.5, 0.25)
    assert options.flush_interval == 0.001


def test_none_means_the_default_for_the_keyword_options_too() -> None:
    options = make(timeout=None, shutdown_timeout=None, send=None, sync_mode=None).options
    assert (options.timeout, options.shutdown_timeout) == (10.0, 5.0)
    assert (options.send, options.sync_mode) == (True, False)
    assert make().options.sync_mode is False


def test_only_trailing_slashes_are_taken_off_the_endpoint() -> None:
    assert make(endpoint="http://127.0.0.1:8800/pathX//").options.endpoint == (
        "http://127.0.0.1:8800/pathX"
    )


def test_the_plain_http_warning_names_the_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    make(endpoint="http://analytics.example.com")
    (message,) = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert message.startswith("Klime: endpoint http://analytics.example.com is plain http")
