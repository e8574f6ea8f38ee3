"""The Kafka cluster as the commands meet it: settings, reachability and librdkafka's log.

Three things every command that talks to Kafka needs before its first message:

* **Settings checked early.**  librdkafka refuses an unknown or malformed property only
  when a client is created, which in the worker happens after the model has loaded.
  :func:`property_problems` creates throw-away clients (no ``bootstrap.servers``, so no
  connection) with the user's properties, one at a time, and turns librdkafka's refusals
  and its "this is a producer property" warnings into configuration problems.
* **One bounded wait for the cluster.**  librdkafka retries an unreachable broker
  forever; :func:`check_reachable` asks for the cluster's metadata for at most
  ``timeout_s`` and otherwise stops the command with one line that names the address,
  librdkafka's own reason (refused, unresolved name, TLS...) and what to check.  A
  refused login or an untrusted broker certificate stops it at once (they do not heal
  by waiting), naming the settings to check.
* **librdkafka's log through Python logging**, rate-limited: an outage is a few lines a
  minute (:func:`librdkafka_logger`), not hundreds.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaException, Producer

Role = Literal["consumer", "producer"]

LOG_INTERVAL_S = 60.0  # the same librdkafka line is logged at most once per interval
_CHECK_GROUP = "stamp-worker-settings-check"  # a consumer handle needs a group.id

# The parts of a librdkafka line that change at every repeat of the same event.
_VOLATILE = re.compile(r"\(after \d+ms in state \w+[^)]*\)|\d+")
_WRONG_ROLE = re.compile(r"Configuration property (\S+) is a (consumer|producer) property")


def same_kind(text: str) -> str:
    """A log or error text with what changes between repeats masked (numbers, timings).

    Two lines with the same result report the same event again, e.g. a refused
    connection "after 0ms" and "after 12ms".
    """
    return _VOLATILE.sub("#", text)


class ClusterError(RuntimeError):
    """The Kafka cluster did not answer within the wait (the message says what to check)."""


class _RateLimit(logging.Filter):
    """Let one line of each kind through per :data:`LOG_INTERVAL_S`, counting the rest.

    Lines are of the same kind when they differ only in numbers (timestamps, "after
    12ms", client and broker ids), so a broker that refuses connections three times a
    second is one line a minute, followed by how many repeats were held back.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # kind → (last shown, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = same_kind(record.getMessage())
        now = time.monotonic()
        with self._lock:
            shown, held = self._seen.get(kind, (-float("inf"), 0))
            if now - shown < self.interval_s:
                self._seen[kind] = (shown, held + 1)
                return False
            self._seen[kind] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in " \
                         f"{now - shown:.0f} s)"
            record.args = None
        return True


def librdkafka_logger(name: str = "librdkafka", interval_s: float = LOG_INTERVAL_S,
                      level: int | None = None) -> logging.Logger:
    """The logger to pass as a client's ``logger`` setting: rate-limited, Python logging.

    Without it librdkafka prints every event to stderr in its own format; with it the
    lines go wherever the command's logging goes, each kind at most once per interval.

    Parameters
    ----------
    name : str
        Logger name (``librdkafka`` by default; lines show it).
    interval_s : float
        Shortest time between two lines of the same kind [s].
    level : int, optional
        Lowest level shown (``logging.ERROR`` for one-shot commands, where librdkafka's
        warnings are retries it resolves by itself).

    Returns
    -------
    logging.Logger
        The same logger for the same name (the filter is added once).
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RateLimit) for f in logger.filters):
        logger.addFilter(_RateLimit(interval_s))
    if level is not None:
        logger.setLevel(level)
    return logger


def command_logging() -> None:
    """Logging of a one-shot command: librdkafka's errors as ``librdkafka: ...`` lines.

    Only when the command has not set logging up itself (``run`` has).
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    librdkafka_logger(level=logging.ERROR)


class _Capture(logging.Handler):
    """Keep librdkafka's lines of one throw-away client (they are not shown)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def _capturing_logger() -> tuple[logging.Logger, _Capture]:
    # A logger outside the hierarchy: nothing propagates to the command's handlers.
    logger = logging.Logger("librdkafka-check", logging.DEBUG)
    capture = _Capture()
    logger.addHandler(capture)
    return logger, capture


def _client(role: Role, settings: Mapping[str, Any]) -> Consumer | Producer:
    if role == "consumer":
        return Consumer({"group.id": _CHECK_GROUP, **settings})
    return Producer(dict(settings))


def _close(client: Consumer | Producer) -> None:
    if isinstance(client, Consumer):
        client.close()
    else:
        client.poll(0)  # serves the log queue (the role warnings arrive through it)


def _refusal(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if hasattr(error, "str") else str(exc)


def property_problems(role: Role, settings: Mapping[str, Any], *, other_role: bool = False
                      ) -> list[tuple[str, str]]:
    """What librdkafka would refuse in one client's pass-through settings.

    Each property is tried alone, so every unknown name and bad value is reported (a
    client refuses only the first), then all together for the combinations librdkafka
    refuses (``enable.idempotence`` with ``acks: 1``...).  A property of the other role,
    which librdkafka would silently ignore, is a problem too.  No connection is made.

    Parameters
    ----------
    role : {"consumer", "producer"}
        Which client the settings are for.
    settings : Mapping[str, Any]
        librdkafka properties as the user gave them (without ``bootstrap.servers`` and
        ``group.id``, which the worker sets).
    other_role : bool
        Accept properties of the other client (settings shared by a producer and a
        consumer, as ``replay -X``).

    Returns
    -------
    list of (str, str)
        ``(property, message)`` pairs; ``property`` is ``""`` for a combination.
    """
    problems: list[tuple[str, str]] = []
    for key, value in settings.items():
        logger, capture = _capturing_logger()
        try:
            client = _client(role, {key: value, "logger": logger})
        except KafkaException as exc:
            reason = _refusal(exc)
            if reason.startswith("Failed to create"):
                # The handle, not the property, was refused: a property that needs
                # others (security.protocol: SASL_SSL needs sasl.mechanism), judged
                # with all of them below.
                continue
            if reason.startswith("No such configuration property"):
                reason = "librdkafka has no such property (see librdkafka's CONFIGURATION.md)"
            problems.append((key, reason))
            continue
        except (TypeError, ValueError) as exc:
            problems.append((key, str(exc)))
            continue
        _close(client)
        for _, line in capture.lines:
            # The line may name the property by its canonical name (linger.ms is
            # queue.buffering.max.ms): with one property tried, it is this one.
            match = _WRONG_ROLE.search(line)
            if match and not other_role:
                other = match.group(2)
                problems.append((key, f"a {other} property, which the {role} ignores: "
                                      f"move it to kafka.{other}"))
    if not problems and settings:
        try:
            _close(_client(role, {**settings, "logger": _capturing_logger()[0]}))
        except (KafkaException, TypeError, ValueError) as exc:
            reason = _refusal(exc) if isinstance(exc, KafkaException) else str(exc)
            problems.append(("", reason.removeprefix(f"Failed to create {role}: ")))
    return problems


def check_reachable(role: Role, settings: Mapping[str, Any], timeout_s: float,
                    what: str = "kafka.bootstrap_servers") -> int:
    """Wait up to ``timeout_s`` for the cluster to answer a metadata request.

    Parameters
    ----------
    role : {"consumer", "producer"}
        Which kind of client asks (its security settings are the ones checked).
    settings : Mapping[str, Any]
        librdkafka settings with ``bootstrap.servers``.
    timeout_s : float
        Longest wait [s].
    what : str
        Where the user sets the address, named in the message (a config key or an
        option such as ``--bootstrap-servers``).

    Returns
    -------
    int
        The number of brokers in the cluster.

    Raises
    ------
    ClusterError
        No answer in time, or at once when the brokers refuse the login (SASL) or their
        certificate is not trusted (TLS); the message names the address, librdkafka's
        reason and what to check.  It never holds a setting's value.
    """
    address = str(settings.get("bootstrap.servers", ""))
    logger, capture = _capturing_logger()
    client = _client(role, {**settings, "logger": logger})
    deadline = time.monotonic() + timeout_s
    fatal: str | None = None
    try:
        while True:
            # Short requests with the log served between them: the reason (refused,
            # unresolved, TLS) arrives through the log queue, not with the timeout.
            step = max(0.05, min(1.0, deadline - time.monotonic()))
            try:
                return len(client.list_topics(timeout=step).brokers)
            except KafkaException:
                client.poll(0)
                fatal = next((line for level, line in capture.lines
                              if level >= logging.WARNING and _security_failure(line)), None)
                if fatal is not None or time.monotonic() >= deadline:
                    break
    finally:
        _close(client)
    if fatal is not None:
        raise ClusterError(_security_message(fatal, address))
    reasons = [line for level, line in capture.lines if level >= logging.WARNING]
    reason = _reason(reasons[-1]) if reasons else "no answer"
    raise ClusterError(
        f"cannot reach Kafka at {address} within {timeout_s:g} s ({reason}): check "
        f"{what}, that the brokers are up and reachable from here, and the security "
        f"settings (security.protocol, sasl.*, ssl.*)")


# librdkafka's words for a login the brokers refused, and for a certificate chain that
# does not lead to a trusted CA (or that names another host): neither heals by retrying.
_AUTH_FAILED = re.compile(r"SASL authentication error|Authentication failed", re.I)
_CERT_FAILED = re.compile(r"certificate verify failed", re.I)


def _security_failure(line: str) -> str | None:
    """``"auth"`` or ``"cert"`` when a librdkafka line reports that failure, else None."""
    if _AUTH_FAILED.search(line):
        return "auth"
    if _CERT_FAILED.search(line):
        return "cert"
    return None


def _security_message(line: str, address: str) -> str:
    """The one line for a refused login or an untrusted certificate (no setting's value)."""
    reason = _reason(line)
    if _security_failure(line) == "auth":
        return (f"authentication failed at Kafka {address} ({reason}): check "
                "sasl.username/sasl.password (and sasl.mechanism, e.g. SCRAM-SHA-512)")
    # librdkafka's own advice follows the OpenSSL reason; the hint below says it shorter.
    reason = reason.split(": broker certificate could not be verified")[0]
    return (f"certificate verify failed at Kafka {address} ({reason}): check "
            "ssl.ca.location (the CA that signed the brokers' certificates; the address "
            "must be a name the certificate holds)")


def _reason(line: str) -> str:
    """The part of a librdkafka log line that says what went wrong."""
    # "FAIL [rdkafka#consumer-2] [thrd:h:9092/bootstrap]: h:9092/bootstrap: Failed to
    # resolve 'h:9092': Name or service not known (after 2ms in state CONNECT)"
    text = line.rsplit("]: ", 1)[-1]
    text = re.sub(r"^\S+/(bootstrap|\d+): ", "", text)
    return re.sub(r"\s*\(after \d+ms in state \w+[^)]*\)", "", text).strip()
