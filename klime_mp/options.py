"""Client options: the official SDK's defaults, validation, and the environment.

Every option is validated once, at construction, so a typo fails at start-up with a
message that names the option, never later inside the sender thread.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from klime_mp.wire import BATCH_PATH, MAX_BATCH_SIZE

# Official SDK defaults (klime 1.1.0); milliseconds where the official API uses them.
DEFAULT_ENDPOINT = "https://i.klime.com"
DEFAULT_FLUSH_INTERVAL_MS = 2000
DEFAULT_MAX_QUEUE_SIZE = 10_000
DEFAULT_RETRY_MAX_ATTEMPTS = 5
DEFAULT_RETRY_INITIAL_DELAY_MS = 1000
# Ours (seconds).
DEFAULT_TIMEOUT_S = 10.0  # the official SDK's urlopen timeout
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0

# The spool (opt-in): a size limit per app directory. At ~300 bytes an event, 256 MiB
# holds ~900,000 events: six hours of an outage at 40 events/s, small next to any disk
# a server writes logs to.
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
MIN_SPOOL_MAX_BYTES = 1024 * 1024

# Not the official 20: the API's limit. An event waits at most flush_interval either
# way, and a POST costs the app about 1 ms of CPU in a worker that idles between
# requests (bench, Gunicorn sync worker): 100 events share it instead of 20.
DEFAULT_MAX_BATCH_SIZE = MAX_BATCH_SIZE
DEFAULT_FLUSH_TIMEOUT_S = 10.0  # flush() and a process-wide flush given no timeout
# The per-request flushes (WSGI and ASGI middleware, uWSGI without threads): short,
# because a request's worker waits for it; what is not sent by then stays queued.
REQUEST_FLUSH_TIMEOUT_S = 5.0

# Events waiting this long with no batch delivered get one warning (per stall).
DEFAULT_STALL_WARNING_S = 300.0

WRITE_KEY_ENV = "KLIME_WRITE_KEY"
DEBUG_ENV = "KLIME_DEBUG"  # "1": log every request (debug=True)
ENDPOINT_ENV = "KLIME_ENDPOINT"
SPOOL_DIR_ENV = "KLIME_SPOOL_DIR"

ErrorCallback = Callable[[BaseException, "list[dict[str, Any]]"], Any]
SuccessCallback = Callable[[Any], Any]
# An event as a dict in, the dict to send (possibly changed) or None to drop it out.
BeforeSend = Callable[[dict[str, Any]], Optional[dict[str, Any]]]
# Request body encodings (Content-Encoding). Off by default: the Klime API does not
# document compressed bodies, so only turn it on for a server known to accept them.
COMPRESSIONS = ("gzip",)


@dataclass(frozen=True)
class Options:
    """Validated, immutable settings of one client. Times are in seconds."""

    write_key: str
    endpoint: str
    flush_interval: float
    max_batch_size: int
    max_queue_size: int
    retry_max_attempts: int
    retry_initial_delay: float
    flush_on_shutdown: bool
    logger: logging.Logger
    on_error: ErrorCallback | None
    on_success: SuccessCallback | None
    timeout: float
    shutdown_timeout: float
    send: bool
    sync_mode: bool
    spool_dir: str | None = None
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    debug: bool = False  # log each request at DEBUG: status, events, bytes, milliseconds
    metrics: bool = True  # OpenTelemetry instruments, when opentelemetry-api is installed
    stall_warning: float = DEFAULT_STALL_WARNING_S
    before_send: BeforeSend | None = None
    compression: str | None = None
    spool_fsync_interval: float | None = None  # seconds; None: no fsync (see docs/spool.md)

    def __repr__(self) -> str:
        # The write key is a credential: it never appears in reprs, logs or errors.
        return (
            f"Options(endpoint={self.endpoint!r}, flush_interval={self.flush_interval}, "
            f"max_batch_size={self.max_batch_size}, max_queue_size={self.max_queue_size}, "
            f"send={self.send}, sync_mode={self.sync_mode}, spool_dir={self.spool_dir!r}, "
            f"compression={self.compression!r})"
        )


def build_options(
    write_key: str | None = None,
    endpoint: str | None = None,
    flush_interval: int | None = None,
    max_batch_size: int | None = None,
    max_queue_size: int | None = None,
    retry_max_attempts: int | None = None,
    retry_initial_delay: int | None = None,
    flush_on_shutdown: bool | None = None,
    logger: logging.Logger | None = None,
    on_error: ErrorCallback | None = None,
    on_success: SuccessCallback | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    send: bool = True,
    sync_mode: bool = False,
    spool_dir: str | os.PathLike[str] | None = None,
    spool_max_bytes: int | None = None,
    debug: bool | None = None,
    metrics: bool = True,
    stall_warning: float = DEFAULT_STALL_WARNING_S,
    before_send: BeforeSend | None = None,
    compression: str | None = None,
    spool_fsync_interval: float | None = None,
) -> Options:
    """Validate the constructor arguments; ``None`` means the official default."""
    batch = _positive_int("max_batch_size", max_batch_size, DEFAULT_MAX_BATCH_SIZE)
    if batch > MAX_BATCH_SIZE:
        raise ValueError(
            f"max_batch_size must be at most {MAX_BATCH_SIZE} (the API limit), got {batch}"
        )
    interval_ms = _positive_number("flush_interval", flush_interval, DEFAULT_FLUSH_INTERVAL_MS)
    delay_ms = _positive_number(
        "retry_initial_delay", retry_initial_delay, DEFAULT_RETRY_INITIAL_DELAY_MS
    )
    log = _logger(logger)
    url = _endpoint(endpoint)
    if _is_cleartext_remote(url):
        log.warning(
            "Klime: endpoint %s is plain http: the write key crosses the network unencrypted", url
        )
    return Options(
        write_key=_write_key(write_key),
        endpoint=url,
        flush_interval=interval_ms / 1000.0,
        max_batch_size=batch,
        max_queue_size=_positive_int("max_queue_size", max_queue_size, DEFAULT_MAX_QUEUE_SIZE),
        retry_max_attempts=_positive_int(
            "retry_max_attempts", retry_max_attempts, DEFAULT_RETRY_MAX_ATTEMPTS
        ),
        retry_initial_delay=delay_ms / 1000.0,
        flush_on_shutdown=_bool("flush_on_shutdown", flush_on_shutdown, True),
        logger=log,
        on_error=_callback("on_error", on_error),
        on_success=_callback("on_success", on_success),
        timeout=_positive_number("timeout", timeout, DEFAULT_TIMEOUT_S),
        shutdown_timeout=_positive_number(
            "shutdown_timeout", shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT_S
        ),
        send=_bool("send", send, True),
        sync_mode=_bool("sync_mode", sync_mode, False),
        spool_dir=_spool_dir(spool_dir),
        spool_max_bytes=_spool_max_bytes(spool_max_bytes),
        debug=_bool("debug", debug, os.environ.get(DEBUG_ENV, "") in ("1", "true")),
        metrics=_bool("metrics", metrics, True),
        stall_warning=_positive_number("stall_warning", stall_warning, DEFAULT_STALL_WARNING_S),
        before_send=_callback("before_send", before_send),
        compression=_compression(compression),
        spool_fsync_interval=_spool_fsync_interval(spool_fsync_interval),
    )


def _write_key(value: str | None) -> str:
    if value is None:
        value = os.environ.get(WRITE_KEY_ENV) or None
    if value is None:
        raise ValueError(f"write_key is required: pass write_key= or set {WRITE_KEY_ENV}")
    if not isinstance(value, str):
        raise TypeError(f"write_key must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("write_key must not be empty")
    if not all("!" <= char <= "~" for char in value):
        # It goes into the Authorization header: a stray newline or a non-ASCII letter
        # fails every request there, with the key quoted in the error. Never quote it.
        raise ValueError(
            "write_key must be printable ASCII without spaces (a trailing newline "
            "from a file or variable?)"
        )
    return value


def _endpoint(value: str | None) -> str:
    if value is None:
        value = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    if not isinstance(value, str):
        raise TypeError(f"endpoint must be a string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint must be an http:// or https:// URL with a host, got {value!r}")
    base = value.rstrip("/")
    # The batch URL itself (https://i.klime.com/v1/batch, as the API docs show it) is a
    # common copy-paste; it means the base URL, not {endpoint}/v1/batch/v1/batch (a 404).
    if base.endswith(BATCH_PATH):
        base = base[: -len(BATCH_PATH)]
    return base


def _spool_dir(value: str | os.PathLike[str] | None) -> str | None:
    """The spool's directory, or None (no spool). It is created at the first event, so
    an unusable one only costs a warning there, never an error here."""
    if value is None:
        value = os.environ.get(SPOOL_DIR_ENV) or None
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"spool_dir must be a path (str or os.PathLike), got {type(value).__name__}"
        )
    path = os.fspath(value)
    if not isinstance(path, str) or not path.strip():
        raise ValueError("spool_dir must be a non-empty path")
    return os.path.abspath(path)  # a later chdir must not move it


def _spool_max_bytes(value: int | None) -> int:
    size = _positive_int("spool_max_bytes", value, DEFAULT_SPOOL_MAX_BYTES)
    if size < MIN_SPOOL_MAX_BYTES:
        raise ValueError(
            f"spool_max_bytes must be at least {MIN_SPOOL_MAX_BYTES} (1 MiB), got {size}"
        )
    return size


def _compression(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"compression must be a string or None, got {type(value).__name__}")
    if value not in COMPRESSIONS:
        raise ValueError(f"compression must be None or 'gzip', got {value!r}")
    return value


def _spool_fsync_interval(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"spool_fsync_interval must be a number of seconds or None, got {type(value).__name__}"
        )
    if not 0 < value < float("inf"):
        raise ValueError(f"spool_fsync_interval must be a positive number of seconds, got {value}")
    return float(value)


def _is_cleartext_remote(url: str) -> bool:
    """http:// to anything but this machine (the local collector is fine)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a DNS name
        return True


def _positive_int(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _positive_number(name: str, value: float | None, default: float) -> float:
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number, got {value}")
    return float(value)


def _bool(name: str, value: bool | None, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _logger(value: logging.Logger | None) -> logging.Logger:
    if value is None:
        return logging.getLogger("klime")
    if not isinstance(value, logging.Logger):
        raise TypeError(f"logger must be a logging.Logger, got {type(value).__name__}")
    return value


def _callback(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value
