"""One frozen, typed configuration for the streaming worker: a YAML file plus environment.

Where a value comes from, later sources winning:

1. the defaults written in the dataclasses below;
2. the YAML file given to :func:`load_config`, else the one ``$STAMP_WORKER_CONFIG``
   names (``deploy/worker.example.yaml`` documents every key);
3. ``$KAFKA_BOOTSTRAP_SERVERS``, the conventional variable, for ``kafka.bootstrap_servers``;
4. ``STAMP_WORKER__SECTION__KEY=value`` variables. A double underscore separates levels
   and names are case-insensitive: ``STAMP_WORKER__BATCH__MAX_MESSAGES=100``,
   ``STAMP_WORKER__TOPICS__INPUT=a,b``, ``STAMP_WORKER__GROUP_ID=labels-v2``, and one
   librdkafka property per variable, ``STAMP_WORKER__KAFKA__CONSUMER__SESSION.TIMEOUT.MS=
   10000``. Most shells cannot export a name with dots, so in a librdkafka property
   without dots ``_`` stands for ``.`` (``..._CONSUMER__SESSION_TIMEOUT_MS``); no
   settable librdkafka or schema-registry property has an underscore in its name.

Scalars follow YAML 1.2, in the file and in the environment alike: ``true``/``false``
are the only booleans, ``10`` is an integer, ``1.5`` and ``1e3`` are numbers, ``null``
and ``~`` are null. YAML 1.1's surprises are not applied (``no`` → False, ``0755`` → 493,
``1:30`` → 90, ``2024-01-01`` → a date): such a value stays a string, so a typo fails
loudly and a password or a topic name is never rewritten. An environment value meant for
a string key is kept verbatim (a group id ``123`` stays ``"123"``); an empty one means
null where null is allowed. (Never ``bool(os.getenv(...))``: the string "false" is true.)

Everything is validated once, at start: unknown keys (typos, with a "did you mean"),
types, ranges, topics that would feed the worker its own output, librdkafka settings the
worker owns, a model directory that is not there. A :class:`ConfigError` lists every
problem, each as ``key.path: what is wrong, what to do``, so one run shows all there is
to fix. The dataclasses check themselves too, so a :class:`WorkerConfig` built in code is
held to the same rules as one read from a file.

The librdkafka dictionaries (``kafka.common`` for both clients, ``kafka.consumer``,
``kafka.producer``) and the schema registry client's (``registry.client``) pass through:
security (``security.protocol``, ``sasl.*``, ``ssl.*``: in ``kafka.common``, so that
one Secret, ``STAMP_WORKER__KAFKA__COMMON__SASL_PASSWORD``, serves both) and tuning
belong there. Their secrets are redacted by :func:`to_dict` and by ``repr``, so a logged
configuration leaks no password.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from worker.model.artifact import BACKENDS as MODEL_BACKENDS
from worker.model.artifact import CLASS_NAMES
from worker.model.artifact import DEVICES as MODEL_DEVICES
from worker.prepare.stamps import PreprocessConfig

ENV_PREFIX = "STAMP_WORKER__"
ENV_CONFIG_FILE = "STAMP_WORKER_CONFIG"
ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"
REDACTED = "<redacted>"
# confluent-kafka's Consumer.consume() refuses to return more messages from one call.
MAX_BATCH_MESSAGES = 1_000_000


class ConfigError(ValueError):
    """The configuration cannot be used; the message lists what to fix.

    Parameters
    ----------
    problems : iterable of (str, str)
        ``(key path, what is wrong and what to do)`` pairs; an empty key path is a
        problem of the whole file.
    source : str, optional
        The file the configuration came from, named at the start of the message.

    Attributes
    ----------
    problems : tuple of (str, str)
        The problems, in the order found.
    source : str or None
        The configuration file.
    """

    def __init__(self, problems: Iterable[tuple[str, str]], source: str | None = None) -> None:
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        self.source = source
        lines = [f"{key}: {message}" if key else message for key, message in self.problems]
        head = f"{source}: " if source else ""
        if len(lines) == 1:
            text = head + lines[0]
        else:
            text = f"{head}{len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would call ConfigError(message): rebuild from the problems instead.
        return (type(self), (self.problems, self.source))


# ----------------------------------------------------------------------------- helpers

class _Sentinel:
    """A marker value that is never a valid setting."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_MISSING = _Sentinel("<missing>")  # a required key that no source gave
_FAILED = _Sentinel("<invalid>")  # a value whose problem is already reported
_ABSENT = _Sentinel("<absent>")  # a section the sources leave at its default


class _Bad(Exception):
    """One value is wrong; the message says what is expected instead."""


class _EnvText(str):
    """The text of an environment variable, remembering the variable's name.

    It stays text until the key it sets says what it should be: a string key keeps it
    verbatim, a number or boolean key reads it as a YAML 1.2 scalar.
    """

    var: str

    def __new__(cls, value: str, var: str) -> _EnvText:
        text = super().__new__(cls, value)
        text.var = var
        return text


_INT_TEXT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
# A '.' or an exponent is required, so that "007" stays a string instead of becoming 7.0.
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?")


def _scalar(text: str) -> Any:
    """Read an environment value as a YAML 1.2 core-schema scalar (else keep the text)."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("", "~", "null"):
        return None
    if _INT_TEXT.fullmatch(stripped):
        return int(stripped)
    if _FLOAT_TEXT.fullmatch(stripped):
        return float(stripped)
    return str(text)


_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
    (list, "list"), (tuple, "list"), (dict, "mapping"), (Mapping, "mapping"))


def _got(value: Any, *, secret: bool = False) -> str:
    """``got <kind> <value>``, for messages (the value hidden when it is a secret)."""
    if value is None:
        return "got null"
    kind = next((name for cls, name in _KINDS if isinstance(value, cls)), type(value).__name__)
    if secret:
        return f"got a {kind} (value hidden)"
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {kind} {text}"


def _key_path(*keys: str) -> str:
    """``a.b["x.y"]``: dotted, with librdkafka-style names (which hold dots) in brackets."""
    out = ""
    for key in keys:
        if not key:
            continue
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            out += f".{key}" if out else key
        else:
            out += f'["{key}"]'
    return out


def _env_name(*keys: str) -> str:
    """The ``STAMP_WORKER__...`` variable that sets a key."""
    return ENV_PREFIX + "__".join(key.upper() for key in keys if key)


def _suggestion(key: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for a key close to a known one, else nothing."""
    close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _valid(*values: Any) -> bool:
    return all(value is not _FAILED for value in values)


# ---------------------------------------------------------------------- value checks
# Each takes a raw value (from YAML, an _EnvText, or a Python caller), returns it
# normalized, or raises _Bad with what is expected.

def _text(value: Any, *, optional: bool = False) -> str | None:
    if isinstance(value, _EnvText):
        if optional and value.strip().lower() in ("", "~", "null"):
            return None
        value = str(value)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        hint = (f" (quote it in YAML: '{value}')"
                if isinstance(value, (bool, int, float)) else "")
        return _fail(f"expected a string{' or null' if optional else ''}, {_got(value)}{hint}")
    if not value.strip():
        return _fail("must not be empty" + ("; leave it out or set null instead"
                                            if optional else ""))
    return value


def _fail(message: str) -> Any:
    raise _Bad(message)


def _integer(value: Any, *, low: int | None = 1, high: int | None = None,
             unit: str = "") -> int:
    if isinstance(value, _EnvText):
        value = _scalar(value)
    if low is None:
        expected = "an integer"
    elif high is not None:
        expected = f"an integer from {low} to {high}"
    else:
        expected = "a positive integer" if low == 1 else f"an integer >= {low}"
    expected += f" [{unit}]" if unit else ""
    if isinstance(value, bool) or not isinstance(value, int):
        return _fail(f"expected {expected}, {_got(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        return _fail(f"expected {expected}, got {value}")
    return value


def _number(value: Any, *, positive: bool = False, optional: bool = False,
            unit: str = "") -> float | None:
    if isinstance(value, _EnvText):
        value = _scalar(value)
    if value is None and optional:
        return None
    expected = ("a positive number" if positive else "a number") + (" or null" if optional
                                                                    else "")
    expected += f" [{unit}]" if unit else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _fail(f"expected {expected}, {_got(value)}")
    if not math.isfinite(value) or (positive and value <= 0):
        return _fail(f"expected {expected}, got {value}")
    return float(value)


def _fraction(value: Any) -> float | None:
    """A share of something: a number in (0, 1], or null."""
    number = _number(value, optional=True)
    if number is not None and not 0 < number <= 1:
        return _fail(f"expected a number > 0 and ≤ 1 or null, got {number:g}")
    return number


def _one_of(value: Any, *, choices: tuple[str, ...]) -> str:
    text = _text(value)
    if text not in choices:
        return _fail(f"expected one of {', '.join(choices)}, got {text!r}")
    return text


def _boolean(value: Any) -> bool:
    if isinstance(value, _EnvText):
        value = _scalar(value)
    if not isinstance(value, bool):
        return _fail(f"expected true or false, {_got(value)}")
    return value


def _instance(value: Any, *, cls: type) -> Any:
    if not isinstance(value, cls):
        return _fail(f"expected a {cls.__name__}, {_got(value)}")
    return value


# host:port, the host a name, an IPv4 address or a bracketed IPv6 one; librdkafka also
# accepts a "proto://" prefix.
_HOST_PORT = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?"
                        r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")


def _bootstrap_servers(value: Any) -> str:
    entries = [entry.strip() for entry in _text(value).split(",")]
    for entry in entries:
        match = _HOST_PORT.fullmatch(entry)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            return _fail(f"{entry!r} is not host:port; expected a comma-separated list such "
                         f"as 'kafka-1:9092,kafka-2:9092'")
    return ",".join(entries)


# Kafka's own rule for topic names.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _topic(value: Any) -> str:
    name = _text(value)
    if name in (".", "..") or not _TOPIC_NAME.fullmatch(name):
        return _fail(f"{name!r} is not a Kafka topic name (letters, digits, '.', '_' and '-', "
                     f"at most 249)")
    return name


def _input_topics(value: Any) -> tuple[str, ...]:
    # Kafka topic names cannot hold a comma, so "a,b" is always a list of two.
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return _fail(f"expected a topic name or a list of them, {_got(value)}")
    if not [item for item in items if not isinstance(item, str) or item.strip()]:
        return _fail("expected at least one topic")
    topics: list[str] = []
    for item in items:
        if not isinstance(item, str):
            return _fail(f"topic names are strings, {_got(item)} (quote it in YAML)")
        name = item.strip()
        if not name:
            return _fail("an empty topic name in the list")
        if name.startswith("^"):
            # librdkafka subscribes to every topic matching a pattern that starts with
            # '^' (ZTF publishes one topic per night); checked with Python's re.
            try:
                re.compile(name)
            except re.error as exc:
                return _fail(f"{name!r} is not a valid regular expression ({exc})")
        else:
            name = _topic(name)
        if name in topics:
            return _fail(f"{name!r} is listed twice")
        topics.append(name)
    return tuple(topics)


def _consumes(pattern: str, topic: str) -> bool:
    """Whether subscribing to ``pattern`` (a name or a ``^`` regex) reads ``topic``."""
    if pattern.startswith("^"):
        return re.search(pattern, topic) is not None
    return pattern == topic


def _registry_url(value: Any) -> str | None:
    text = _text(value, optional=True)
    if text is None:
        return None
    # confluent-kafka's client takes a comma-separated list, tried in turn.
    for url in text.split(","):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return _fail(f"{_redact_url(url.strip())!r} is not an http(s) URL such as "
                         f"'http://registry:8081'")
    return text


def _model_dir(value: Any) -> Path | None:
    if isinstance(value, _EnvText):
        value = _text(value, optional=True)
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        return _fail(f"expected the path of a model directory, or null for the bundled "
                     f"model, {_got(value)}")
    if isinstance(value, str) and not value.strip():
        return _fail("is empty; leave it out or set null for the bundled model")
    path = Path(value).expanduser().absolute()
    what = ("a model artifact directory (model.keras + manifest.json, made by "
            "`stamp-train train`), or null for the bundled model")
    if not path.exists():
        return _fail(f"{str(path)!r} does not exist; expected {what}")
    if not path.is_dir():
        return _fail(f"{str(path)!r} is not a directory; expected {what}")
    return path


# Kafka's rule for a group.instance.id (the same as for a topic name).
_INSTANCE_ID = _TOPIC_NAME
MAX_INSTANCE_ID = 249


def _instance_id(value: Any) -> str | None:
    name = _text(value, optional=True)
    if name is None:
        return None
    if name in (".", "..") or not _INSTANCE_ID.fullmatch(name):
        return _fail(f"{name!r} is not a Kafka group.instance.id (letters, digits, '.', '_' "
                     f"and '-', at most {MAX_INSTANCE_ID}); a Kubernetes pod name is one")
    return name


def _librdkafka_bool(value: Any) -> bool | None:
    """A librdkafka boolean as librdkafka reads it (true/t/1, false/f/0), else None."""
    text = str(value).strip().lower()
    if value is True or text in ("true", "t", "1"):
        return True
    if value is False or text in ("false", "f", "0"):
        return False
    return None


# ------------------------------------------------------------------------- redaction

_SECRET_KEYS = frozenset({
    "sasl.password", "ssl.key.password", "ssl.key.pem", "basic.auth.user.info",
    "bearer.auth.token", "sasl.oauthbearer.config",
    "sasl.oauthbearer.assertion.private.key.pem"})
_SECRET_WORDS = ("password", "secret", "passphrase")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/\s,]+)@")


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return lowered in _SECRET_KEYS or any(word in lowered for word in _SECRET_WORDS)


def _redact_url(text: str) -> str:
    """Hide the password of ``scheme://user:password@host`` (a bare token as user too)."""
    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return match["scheme"] + (f"{user}:{REDACTED}" if colon else REDACTED) + "@"

    return _URL_USERINFO.sub(hide, text)


def _redacted(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: REDACTED if _is_secret(key) else
            (_redact_url(value) if isinstance(value, str) else value)
            for key, value in mapping.items()}


def _redacting_repr(obj: Any) -> str:
    parts = []
    for item in fields(obj):
        value = getattr(obj, item.name)
        if isinstance(value, Mapping):
            value = _redacted(value)
        elif isinstance(value, str):
            value = _redact_url(value)
        parts.append(f"{item.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


# ------------------------------------------------------------------ section checking

class _Checks:
    """Validate and normalize the fields of one section, collecting every problem."""

    def __init__(self, target: Any, prefix: str) -> None:
        self.target = target
        self.prefix = prefix
        self.problems: list[tuple[str, str]] = []
        self.failed = False

    def add(self, message: str, *keys: str) -> None:
        self.problems.append((_key_path(self.prefix, *keys), message))

    def field(self, name: str, check: Callable[..., Any], **options: Any) -> Any:
        """Check one field and store its normalized value; ``_FAILED`` when it is wrong."""
        value = getattr(self.target, name)
        if value is _FAILED:  # its own problems are already on the list
            self.failed = True
            return _FAILED
        if value is _MISSING:
            how = (f"{ENV_BOOTSTRAP} or " if (self.prefix, name) == ("kafka", "bootstrap_servers")
                   else "")
            self.add(f"required: set it in the config file or with {how}"
                     f"{_env_name(self.prefix, name)}", name)
            return _FAILED
        try:
            value = check(value, **options)
        except _Bad as exc:
            self.add(str(exc), name)
            return _FAILED
        object.__setattr__(self.target, name, value)
        return value

    def passthrough(self, name: str, owned: Mapping[str, str]) -> Any:
        """Check a librdkafka-style dictionary; store it read-only.

        ``owned`` maps the properties the worker sets itself to the message that says
        where to set them instead.
        """
        raw = getattr(self.target, name)
        if raw is None:  # "consumer:" with every line under it commented out
            raw = {}
        if not isinstance(raw, Mapping):
            self.add(f"expected a mapping of property: value, {_got(raw)}", name)
            return _FAILED
        clean: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str) or not key.strip():
                self.add(f"property names are non-empty strings, {_got(key)}", name, str(key))
                continue
            if key != key.lower():  # librdkafka's names are all lower case
                self.add(f"property names are lower case; did you mean {key.lower()!r}?",
                         name, key)
                continue
            if key in owned:
                self.add(owned[key], name, key)
                continue
            if isinstance(value, _EnvText):
                # A password is text as given: "1.50" would otherwise reach librdkafka
                # as the number 1.5, that is "1.5".
                value = str(value) if _is_secret(key) else _scalar(value)
            if not isinstance(value, (str, int, float)):  # bool is an int
                self.add(f"expected a string, number or boolean, "
                         f"{_got(value, secret=_is_secret(key))}", name, key)
                continue
            clean[key] = value
        mapping = MappingProxyType(clean)
        object.__setattr__(self.target, name, mapping)
        return mapping

    def done(self) -> None:
        if self.problems or self.failed:
            raise ConfigError(self.problems)


_SET_BOOTSTRAP = ("the worker sets it from kafka.bootstrap_servers; set that key (or "
                  f"{ENV_BOOTSTRAP}) instead")
_CONSUMER_OWNED = {
    "bootstrap.servers": _SET_BOOTSTRAP,
    "metadata.broker.list": _SET_BOOTSTRAP,
    "group.id": "the worker sets it from group_id; set that key instead",
    "enable.partition.eof": "the worker turns it off (it never waits for the end of a "
                            "partition); remove it",
    "group.instance.id": "the worker sets it from instance_id (adding the process index "
                         "with processes: N); set that key instead",
}
_PRODUCER_OWNED = {
    "bootstrap.servers": _SET_BOOTSTRAP,
    "metadata.broker.list": _SET_BOOTSTRAP,
    "group.id": "producers have no consumer group; the worker's comes from group_id",
    "transactional.id": "set exactly_once: true instead; the worker then derives a "
                        "stable transactional.id for each process from group_id and "
                        "instance_id (or the host name)",
}
_COMMON_OWNED = {**_PRODUCER_OWNED, **_CONSUMER_OWNED}
_REGISTRY_OWNED = {"url": "set registry.url instead"}


# --------------------------------------------------------------------------- sections

@dataclass(frozen=True, slots=True, repr=False)
class KafkaConfig:
    """Where the brokers are, and librdkafka settings passed through unchanged.

    Parameters
    ----------
    bootstrap_servers : str
        Comma-separated ``host:port`` list (``kafka-1:9092,kafka-2:9092``).
    connect_timeout_s : float
        How long a command waits at start for the cluster to answer [s] before it stops
        with a message naming the address (librdkafka itself would retry forever).
    consumer, producer : Mapping[str, str | int | float | bool]
        librdkafka properties for the consumer and the producer (``session.timeout.ms``,
        ``linger.ms``...), over those of ``common``. Stored read-only. Not allowed:
        ``bootstrap.servers`` and ``group.id`` (they come from the typed fields),
        ``enable.auto.commit: true`` (the worker commits an offset only once the labels of
        its batch are delivered), ``enable.partition.eof``, ``group.instance.id`` and
        ``transactional.id`` (see ``instance_id`` and ``exactly_once``).  Names and
        values are checked by librdkafka itself when the configuration is loaded, and a
        property of the other client is refused.
    common : Mapping[str, str | int | float | bool]
        librdkafka properties of both clients: how to reach and log in to the cluster
        (``security.protocol``, ``sasl.mechanism``, ``sasl.username``,
        ``sasl.password``, ``ssl.ca.location``...).  A property of one client only is
        refused (it belongs in ``consumer`` or ``producer``), and so are those refused
        there.
    """

    bootstrap_servers: str
    connect_timeout_s: float = 30.0
    consumer: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)
    common: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = _Checks(self, "kafka")
        checks.field("bootstrap_servers", _bootstrap_servers)
        checks.field("connect_timeout_s", _number, positive=True)
        consumer = checks.passthrough("consumer", _CONSUMER_OWNED)
        producer = checks.passthrough("producer", _PRODUCER_OWNED)
        common = checks.passthrough("common", _COMMON_OWNED)
        for section, settings in (("common", common), ("consumer", consumer)):
            if not _valid(settings):
                continue
            # auto.commit.enable is librdkafka's old (topic-level) name for the same thing.
            for key in ("enable.auto.commit", "auto.commit.enable"):
                if key in settings and _librdkafka_bool(settings[key]) is not False:
                    checks.add("must not be true: the worker commits an offset only after "
                               "the labels of its batch are delivered, automatic commits "
                               "would lose alerts on a crash; remove it", section, key)
        # librdkafka itself judges names and values (a typo would otherwise surface as
        # a traceback once the model has loaded); no connection is made. Each client is
        # judged with what it gets, common and its own together (SASL_SSL in common
        # needs sasl.mechanism, wherever it is); a problem is named where it was set.
        from worker.stream.cluster import property_problems

        found: dict[tuple[str, ...], list[str]] = {}  # (section, key, message) → roles
        for role, settings in (("consumer", consumer), ("producer", producer)):
            if _valid(settings, common):
                merged = {**common, **settings}  # type: ignore[dict-item]
                for key, message in property_problems(role, merged):  # type: ignore[arg-type]
                    # Named where it was set; a combination ("" key) is the client's.
                    section = ("" if not key else role if key in settings  # type: ignore[operator]
                               or key not in common else "common")
                    found.setdefault((section, key, message), []).append(role)
        for (section, key, message), roles in found.items():
            if not key:  # refused by both clients: their common part; else the one's
                section = "common" if len(roles) == 2 else roles[0]
            checks.add(message, section, key)
        checks.done()

    def client_settings(self, role: str) -> dict[str, Any]:
        """The librdkafka settings of one client: ``common``, then the client's own.

        Parameters
        ----------
        role : {"consumer", "producer"}
            Which client.

        Returns
        -------
        dict
            A new dict with ``bootstrap.servers``; the caller adds what it owns
            (``group.id``, callbacks).
        """
        own = self.consumer if role == "consumer" else self.producer
        return {**self.common, **own, "bootstrap.servers": self.bootstrap_servers}

    def __repr__(self) -> str:
        return _redacting_repr(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled or deep-copied; rebuild from plain dicts.
        return (type(self), (self.bootstrap_servers, self.connect_timeout_s,
                             dict(self.consumer), dict(self.producer), dict(self.common)))


@dataclass(frozen=True, slots=True)
class TopicsConfig:
    """The topics read and written.

    Parameters
    ----------
    input : tuple of str
        Topics to consume (YAML: a name, a comma-separated string or a list). A name
        starting with ``^`` is a regular expression (librdkafka subscribes to every
        matching topic, e.g. ``^ztf_.*_programid1$`` for ZTF's nightly topics).
    output : str
        Topic of the labels.
    dead_letter : str
        Topic of the alerts that cannot be classified, with the reason in headers.
        Must differ from ``output``; neither may be consumed by ``input`` (the worker
        would classify its own output).
    """

    input: tuple[str, ...]
    output: str
    dead_letter: str

    def __post_init__(self) -> None:
        checks = _Checks(self, "topics")
        inputs = checks.field("input", _input_topics)
        output = checks.field("output", _topic)
        dead_letter = checks.field("dead_letter", _topic)
        if _valid(output, dead_letter) and output == dead_letter:
            checks.add(f"is the same topic as topics.output ({output!r}); labels and bad "
                       f"alerts must go to different topics", "dead_letter")
        if _valid(inputs):
            for key, topic in (("output", output), ("dead_letter", dead_letter)):
                pattern = next((p for p in inputs if _valid(topic) and _consumes(p, topic)),
                               None)
                if pattern is not None:
                    checks.add(f"{topic!r} is also consumed (topics.input has {pattern!r}): "
                               f"the worker would read its own output", key)
        checks.done()


MAX_PROCESSES = 64  # worker processes of one `stamp-worker run`
MAX_WAIT_MS = 1000  # one consume() per batch, and SIGTERM seen within a second


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Micro-batching: consume up to ``max_messages`` messages or for ``max_wait_ms``.

    Parameters
    ----------
    max_messages : int
        Most messages per batch (1 to 1,000,000, confluent-kafka's limit); one batch is
        one model call and one commit.  Larger batches raise latency, not throughput.
    max_wait_ms : int
        Longest wait for a batch to fill [ms], 1 to 1000; bounds the latency added at
        low rates.  At most one second, because one wait is one ``consume()`` call (a
        rebalance may only happen between batches) and SIGTERM is checked between calls.
    decode_processes : int
        Helper processes that decode and preprocess alerts (0 to 64).  0: the worker's
        own process does it.  Decoding is pure Python for a good part, so one process
        cannot use a second core for it; with helpers, chunks of a batch are decoded in
        parallel while the worker runs the model on the chunks already done.
    commit_interval_ms : int
        Least time between two asynchronous offset commits [ms], 0 to 60,000; 0 commits
        after every delivered batch.  Offsets are committed only once the batch's labels
        are delivered, whatever the interval; stopping and rebalancing commit at once.
        A longer interval means fewer commits for the broker to write, and more alerts
        labelled again after a crash (at most this long of stream).
    """

    # Measured (README, End-to-end performance): at 1,000 alerts/s offered, batches of
    # up to 256 and a 50 ms wait keep p99 produce→label latency under 0.5 s; batches of
    # 500 gave 0.6-1.4 s, since an alert waits for its whole batch and the one before
    # it.  The model's CPU time per alert is flat from 64 alerts per call up.
    max_messages: int = 256
    max_wait_ms: int = 50
    decode_processes: int = 0
    commit_interval_ms: int = 1000

    def __post_init__(self) -> None:
        checks = _Checks(self, "batch")
        checks.field("max_messages", _integer, low=1, high=MAX_BATCH_MESSAGES)
        checks.field("max_wait_ms", _integer, low=1, high=MAX_WAIT_MS, unit="ms")
        checks.field("decode_processes", _integer, low=0, high=64)
        checks.field("commit_interval_ms", _integer, low=0, high=60_000, unit="ms")
        checks.done()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint (``/metrics``, ``/healthz``, ``/readyz``).

    Parameters
    ----------
    host : str
        Address to listen on; ``127.0.0.1`` keeps it local, ``0.0.0.0`` in a container.
    port : int
        TCP port, 0 to 65535; 0 disables the HTTP server.
    """

    host: str = "127.0.0.1"
    port: int = 9108

    def __post_init__(self) -> None:
        checks = _Checks(self, "metrics")
        checks.field("host", _text)
        checks.field("port", _integer, low=0, high=65535)
        checks.done()


@dataclass(frozen=True, slots=True)
class AsteroidPolicy:
    """Label an alert ``asteroid`` without the CNN when ZTF matched a known one.

    ZTF gives the nearest known solar-system object (``ssnamenr``), its distance
    (``ssdistnr`` [arcsec], searched within 30 arcsec, -999 for none) and magnitude
    (``ssmagnr`` [mag]). Off by default: the model's output is then the only label.

    Parameters
    ----------
    enabled : bool
        Apply the rule.
    max_ssdistnr_arcsec : float
        Largest distance to the known object [arcsec], > 0.
    max_ssmagnr : float or None
        Faintest magnitude of the known object [mag]; None: no magnitude cut.
    """

    enabled: bool = False
    max_ssdistnr_arcsec: float = 5.0
    max_ssmagnr: float | None = None

    def __post_init__(self) -> None:
        checks = _Checks(self, "asteroid_policy")
        checks.field("enabled", _boolean)
        checks.field("max_ssdistnr_arcsec", _number, positive=True, unit="arcsec")
        checks.field("max_ssmagnr", _number, optional=True, unit="mag")
        checks.done()


@dataclass(frozen=True, slots=True, repr=False)
class RegistryConfig:
    """The schema registry that Confluent-framed messages name their writer schema in.

    Parameters
    ----------
    url : str or None
        Base URL (``http://registry:8081``; a comma-separated list is tried in turn).
        None: no registry, Confluent-framed messages are dead-lettered.
    client : Mapping[str, str | int | float | bool]
        :class:`confluent_kafka.schema_registry.SchemaRegistryClient` settings
        (``basic.auth.user.info``, ``ssl.ca.location``, ``timeout`` [s]...), checked by
        building a client once. Stored read-only; needs ``url``.
    """

    url: str | None = None
    client: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = _Checks(self, "registry")
        url = checks.field("url", _registry_url)
        client = checks.passthrough("client", _REGISTRY_OWNED)
        if _valid(url, client) and client and url is None:
            checks.add("is set but registry.url is not: set registry.url, or remove "
                       "registry.client", "client")
        elif _valid(url, client) and url is not None and not checks.problems:
            problem = _registry_client_problem(url, client)
            if problem:
                checks.add(problem, "client")
        checks.done()

    def __repr__(self) -> str:
        return _redacting_repr(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict.
        return (type(self), (self.url, dict(self.client)))


def _registry_client_problem(url: str, client: Mapping[str, Any]) -> str | None:
    """What confluent-kafka's registry client says of these settings (it builds offline)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient  # only with a registry

    try:
        with SchemaRegistryClient({"url": url, **client}):
            pass
    except (ValueError, TypeError) as exc:  # "Unrecognized properties: ...", bad types
        return f"refused by the schema registry client: {exc}"
    except OSError as exc:  # a certificate or key file that cannot be read
        return f"refused by the schema registry client: {exc.strerror or exc}: {exc.filename}"
    return None


BUNDLED_MODEL_BASELINE: Mapping[str, float] = MappingProxyType({
    "AGN": 0.092, "SN": 0.159, "VS": 0.551, "asteroid": 0.062, "bogus": 0.136})
"""Top-class shares of the bundled model (rotinv v2) on the 1656 alerts of the shared
real data that it labels: ``stamp-worker classify ../shared/data -q -o /dev/null``
counts AGN 152, SN 264, VS 912, asteroid 102, bogus 226.  That sample is a mix of test
files and class-selected sets of other brokers, not one night's stream: measure a
normal night and set ``drift.baseline`` from it."""
BASELINE_SUM_TOLERANCE = 0.01
"""How far from 1 the baseline shares may sum (shares rounded to 2-3 decimals)."""


def _baseline(value: Any) -> Mapping[str, float]:
    """Class shares: a mapping with every class name, or ``AGN=0.1,SN=0.2,...`` text."""
    if isinstance(value, _EnvText):
        pairs: dict[str, Any] = {}
        for part in str(value).split(","):
            name, sep, share = part.partition("=")
            if not sep or not name.strip():
                return _fail(f"expected CLASS=SHARE pairs separated by commas "
                             f"(e.g. {CLASS_NAMES[0]}=0.1,{CLASS_NAMES[1]}=0.2,...), got "
                             f"{part.strip()!r}")
            pairs[name.strip()] = _scalar(share)
        value = pairs
    if not isinstance(value, Mapping):
        return _fail(f"expected a mapping of class: share for {', '.join(CLASS_NAMES)}, "
                     f"{_got(value)}")
    problems = []
    for name in value:
        if name not in CLASS_NAMES:
            same = [known for known in CLASS_NAMES if known.lower() == str(name).lower()]
            hint = f"; did you mean {same[0]!r}?" if same else ""
            problems.append(f"unknown class {name!r}{hint}")
    missing = [name for name in CLASS_NAMES if name not in value]
    if missing:
        problems.append(f"no share for {', '.join(missing)}")
    for name in CLASS_NAMES:
        share = value.get(name)
        if name in value and (isinstance(share, bool) or not isinstance(share, (int, float))
                              or not 0 <= share <= 1):
            problems.append(f"{name}: expected a share from 0 to 1, {_got(share)}")
    if problems:
        return _fail("; ".join(problems) + f" (classes: {', '.join(CLASS_NAMES)})")
    total = math.fsum(float(value[name]) for name in CLASS_NAMES)
    if abs(total - 1) > BASELINE_SUM_TOLERANCE:
        return _fail(f"the shares sum to {total:.4g}, not 1 (± {BASELINE_SUM_TOLERANCE:g})")
    return MappingProxyType({name: float(value[name]) for name in CLASS_NAMES})


def _distance(value: Any) -> float | None:
    number = _number(value, positive=True)
    if number is not None and number > 1:
        return _fail(f"expected a total variation distance > 0 and <= 1, got {number:g}")
    return number


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """What the model's predictions should look like, for the drift alert.

    Exported as ``stamp_worker_drift_baseline_share{class}`` and
    ``stamp_worker_drift_max_distance``; the Prometheus rule ``StampWorkerClassDrift``
    compares the shares of top classes predicted over the last hour with them.

    Parameters
    ----------
    baseline : Mapping[str, float]
        Expected share of each top class among the model's predictions, one per class
        of :data:`worker.model.artifact.CLASS_NAMES`, from 0 to 1, summing to 1 (± 0.01).  In
        the environment: ``STAMP_WORKER__DRIFT__BASELINE=AGN=0.1,SN=0.2,...``.  Default:
        :data:`BUNDLED_MODEL_BASELINE`, the bundled model's; set it with any other model.
    max_distance : float
        Largest total variation distance (half the sum of the absolute share
        differences: the fraction of predictions that would have to change class) still
        taken as normal, in (0, 1].
    """

    baseline: Mapping[str, float] = field(default_factory=lambda: BUNDLED_MODEL_BASELINE)
    max_distance: float = 0.2

    def __post_init__(self) -> None:
        checks = _Checks(self, "drift")
        checks.field("baseline", _baseline)
        checks.field("max_distance", _distance)
        checks.done()

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict.
        return (type(self), (dict(self.baseline), self.max_distance))


_SECTION_TYPES: dict[str, type] = {
    "kafka": KafkaConfig, "topics": TopicsConfig, "batch": BatchConfig,
    "preprocessing": PreprocessConfig, "metrics": MetricsConfig,
    "asteroid_policy": AsteroidPolicy, "registry": RegistryConfig, "drift": DriftConfig}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything the streaming worker is told; frozen, validated when built.

    Parameters
    ----------
    kafka : KafkaConfig
        Brokers and librdkafka settings.
    topics : TopicsConfig
        Input, output and dead-letter topics.
    group_id : str
        Kafka consumer group; workers sharing it share the partitions.
    instance_id : str or None
        This member's stable identity in the group, e.g. its Kubernetes pod name
        (``STAMP_WORKER__INSTANCE_ID`` from the downward API's ``metadata.name``); with
        ``processes: N`` process *i* uses ``<instance_id>-<i>``.  Set: static membership
        (``group.instance.id``), so a member restarted within ``session.timeout.ms`` takes
        its partitions back at once, without a rebalance; and, with ``exactly_once``, the
        ``transactional.id`` ``<group_id>-<instance_id>``.  A member that stops and is
        not restarted keeps its partitions unread until ``session.timeout.ms`` has
        passed, a clean stop included.  Must be unique among the live members.  None:
        dynamic membership, and with ``exactly_once`` a transactional.id from the host
        name and a slot that no live worker on the host holds.
    batch : BatchConfig
        Micro-batch size [messages] and wait [ms].
    preprocessing : worker.prepare.stamps.PreprocessConfig
        Crop size and non-square policy (YAML keys ``crop_size``, ``non_square``); must
        match the model's manifest.
    model_path : pathlib.Path or None
        Model artifact directory; None: the model bundled with the worker. In a file, a
        relative path is relative to the file's folder.
    model_backend : str
        What runs the model: ``onnx`` (ONNX Runtime on the artifact's ``model.onnx``;
        TensorFlow is never imported: a peak of about 0.4 GB resident per process
        instead of 1.2 GB, ready in about a second), ``keras`` (Keras on TensorFlow),
        ``jax`` (Keras on JAX, on the CPU or a GPU: the worker sets ``KERAS_BACKEND=jax``
        before Keras is imported), ``onnx-int8`` (ONNX Runtime on the artifact's 8-bit
        ``model.int8.onnx``, CPU only: 0.56–0.79 of the model's CPU time, top class equal
        to the float model's on the share of real alerts its manifest states; labels
        say ``+int8`` in ``model_version``), or ``auto`` (default: ``onnx`` when the
        artifact lists a ``model.onnx``, else ``keras``).
    model_device : str
        ONNX and JAX backends (``keras`` and ``onnx-int8`` run on the CPU only and
        refuse a GPU):
        ``cpu`` (default), ``gpu`` or its synonym ``cuda`` (an
        NVIDIA GPU; needs the ``gpu`` extra: onnxruntime-gpu, jax[cuda12]; without a
        usable GPU the worker stops with one line saying what is missing) or ``auto``
        (the GPU when one is usable, else the CPU).
    model_threads : int
        ONNX backends: threads per prediction; 0 (default): with one worker process
        ONNX Runtime's choice, one per physical core; with ``processes: N``, the CPUs
        shared out between the N processes, at least 1 each
        (:func:`worker.model.artifact.threads_per_process`).
    model_memory_fraction : float or None
        JAX backend on a GPU: share of the GPU's memory each worker process reserves
        at start (``XLA_PYTHON_CLIENT_MEM_FRACTION``), 0 < x ≤ 1; ``processes`` times it
        must not pass 1.  None (default): nothing reserved, memory taken as needed
        (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so that several processes share one
        GPU; JAX alone would take 75 % of it in the first process.
    metrics : MetricsConfig
        Prometheus endpoint.
    asteroid_policy : AsteroidPolicy
        Known-asteroid shortcut (off by default).
    registry : RegistryConfig
        Schema registry for Confluent-framed messages.
    drift : DriftConfig
        Expected class shares of the model's predictions, for the drift alert.
    exactly_once : bool
        Transactional producer: labels and offsets are committed atomically (consumers of
        the labels must read with ``isolation.level=read_committed``).
    shutdown_timeout_s : float
        Longest wait for outstanding deliveries when stopping [s], > 0.
    processes : int
        Worker processes ``stamp-worker run`` starts (1 to 64), each a full worker and a
        member of the consumer group; process *i* serves its metrics on
        ``metrics.port + i``.  One process runs its stages one after the other and so
        keeps about 1.2 cores busy; on the 2-core development machine 2 processes
        drained 1.5× as many alerts per second (README, End-to-end performance).

    Notes
    -----
    Not hashable (the librdkafka dictionaries are mappings); pickles and deep-copies.
    """

    kafka: KafkaConfig
    topics: TopicsConfig
    group_id: str = "stamp-classifier"
    instance_id: str | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    model_path: Path | None = None
    model_backend: str = "auto"
    model_device: str = "cpu"
    model_threads: int = 0
    model_memory_fraction: float | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    asteroid_policy: AsteroidPolicy = field(default_factory=AsteroidPolicy)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    exactly_once: bool = False
    shutdown_timeout_s: float = 30.0
    processes: int = 1

    def __post_init__(self) -> None:
        checks = _Checks(self, "")
        for name, cls in _SECTION_TYPES.items():
            checks.field(name, _instance, cls=cls)
        checks.field("group_id", _text)
        instance_id = checks.field("instance_id", _instance_id)
        checks.field("model_path", _model_dir)
        backend = checks.field("model_backend", _one_of, choices=MODEL_BACKENDS)
        device = checks.field("model_device", _one_of, choices=MODEL_DEVICES)
        checks.field("model_threads", _integer, low=0, high=256)
        # The keras backend runs on TensorFlow's CPU build: a GPU asked of it would be
        # ignored without a word, so it is refused here instead.
        if backend in ("keras", "onnx-int8") and device in ("gpu", "cuda"):
            checks.add(f"{device} is served by model_backend onnx or jax, not {backend} "
                       "(which runs on the CPU); set one of them or model_device: cpu",
                       "model_device")
        memory_fraction = checks.field("model_memory_fraction", _fraction)
        exactly_once = checks.field("exactly_once", _boolean)
        checks.field("shutdown_timeout_s", _number, positive=True, unit="s")
        processes = checks.field("processes", _integer, low=1, high=MAX_PROCESSES)
        if isinstance(memory_fraction, float):
            if isinstance(backend, str) and backend != "jax":
                checks.add(f"is used by model_backend jax only, not {backend}; remove it or "
                           "set model_backend: jax", "model_memory_fraction")
            elif isinstance(processes, int) and processes * memory_fraction > 1 + 1e-9:
                checks.add(f"{processes} processes × {memory_fraction:g} of the GPU's memory "
                           f"is more than all of it; use at most {1 / processes:.3g}",
                           "model_memory_fraction")
        if (isinstance(processes, int) and isinstance(self.metrics, MetricsConfig)
                and self.metrics.port and self.metrics.port + processes - 1 > 65535):
            checks.add(f"{processes} processes serve metrics on ports {self.metrics.port} to "
                       f"{self.metrics.port + processes - 1}, past 65535; lower metrics.port",
                       "processes")
        if (isinstance(instance_id, str) and isinstance(processes, int) and processes > 1
                and len(f"{instance_id}-{processes - 1}") > MAX_INSTANCE_ID):
            checks.add(f"with {processes} processes the last one's group.instance.id, "
                       f"'<instance_id>-{processes - 1}', is longer than {MAX_INSTANCE_ID} "
                       f"characters; shorten it", "instance_id")
        if exactly_once is True and isinstance(self.kafka, KafkaConfig):
            idempotence = self.kafka.producer.get("enable.idempotence", True)
            if _librdkafka_bool(idempotence) is not True:
                checks.add("must stay true with exactly_once (Kafka transactions need the "
                           "idempotent producer); remove it", "kafka", "producer",
                           "enable.idempotence")
        checks.done()


_TOP_KEYS = tuple(item.name for item in fields(WorkerConfig))
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    name: (("crop_size", "non_square") if cls is PreprocessConfig
           else tuple(item.name for item in fields(cls)))
    for name, cls in _SECTION_TYPES.items()}
_PASSTHROUGH = frozenset({("kafka", "consumer"), ("kafka", "producer"), ("kafka", "common"),
                          ("registry", "client")})


# ---------------------------------------------------------------------------- loading

def _yaml12_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader with YAML 1.2 scalars, refusing duplicate keys.

    PyYAML implements YAML 1.1, whose ``yes``/``no``/``on``/``off`` booleans, leading-zero
    octals, ``1:30`` base-60 numbers and dates turn topic names and passwords into other
    things; and it keeps the last of two equal keys without a word.
    """

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' may repeat
                        continue
                    key = self.construct_object(key_node, deep=True)
                    if isinstance(key, (str, int, float, bool)) and key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping", node.start_mark,
                            f"found the key {key!r} twice", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    replaced = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                 re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:int",
                                 re.compile(rf"^{_INT_TEXT.pattern}$"), list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(rf"^{_FLOAT_TEXT.pattern}$"), list("-+0123456789."))
    return Loader


_Loader = _yaml12_loader()


def _read_yaml(file: Path) -> dict[Any, Any]:
    """The file's top-level mapping; {} for an empty file."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("", f"config file {file} not found (given by --config or "
                                f"${ENV_CONFIG_FILE})")]) from None
    except IsADirectoryError:
        raise ConfigError([("", f"config file {file} is a directory; give the YAML "
                                f"file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"cannot read config file {file}: {exc}")]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: builds no Python objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError([("", f"{file}{where}: not valid YAML: {exc.problem}"
                                f"{context}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"{file}: not valid YAML: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"{file}: expected a mapping of sections (kafka, topics, "
                                f"...) at the top, {_got(data)}")])
    return data


def _env_key_path(var: str) -> tuple[str, ...]:
    """The key path that a ``STAMP_WORKER__...`` variable sets; raises _Bad."""
    parts = [part.lower() for part in var[len(ENV_PREFIX):].split("__")]
    if not all(parts):
        return _fail(f"an empty name between '__'; the form is {ENV_PREFIX}SECTION__KEY")
    top = parts[0]
    if top not in _TOP_KEYS:
        return _fail(f"unknown key {top!r}{_suggestion(top, _TOP_KEYS)} "
                     f"(known: {', '.join(_TOP_KEYS)})")
    if top not in _SECTION_KEYS:
        if len(parts) > 1:
            return _fail(f"{top} is one value, not a section; use {_env_name(top)}")
        return (top,)
    known = _SECTION_KEYS[top]
    if len(parts) == 1:
        return _fail(f"{top} is a section; set one key per variable, e.g. "
                     f"{_env_name(top, known[0])}")
    key = parts[1]
    if key not in known:
        return _fail(f"unknown key {top}.{key}{_suggestion(key, known)} "
                     f"({top} has: {', '.join(known)})")
    if (top, key) in _PASSTHROUGH:
        if len(parts) != 3:
            return _fail(f"{top}.{key} takes one property per variable, e.g. "
                         f"{_env_name(top, key)}__SESSION.TIMEOUT.MS")
        prop = parts[2] if "." in parts[2] else parts[2].replace("_", ".")
        return (top, key, prop)
    if len(parts) > 2:
        return _fail(f"{top}.{key} is one value, not a section; use {_env_name(top, key)}")
    return (top, key)


def _env_paths(env: Mapping[str, str], prefix: str, problems: list[tuple[str, str]]
               ) -> Iterator[tuple[str, tuple[str, ...]]]:
    """The variables of ``env`` named ``prefix...`` (any case), sorted, with key paths.

    A name that is no key path is added to ``problems`` and skipped.
    """
    for var in sorted(env):
        if not var.upper().startswith(prefix):
            continue
        try:
            yield var, _env_key_path(var)
        except _Bad as exc:
            problems.append((var, str(exc)))


def _apply_env(tree: dict[Any, Any], env: Mapping[str, str],
               origins: dict[str, str]) -> list[tuple[str, str]]:
    """Write the environment's overrides into ``tree``; return the problems of names."""
    problems: list[tuple[str, str]] = []
    overrides: list[tuple[tuple[str, ...], _EnvText]] = []
    if env.get(ENV_BOOTSTRAP):  # empty counts as unset, as compose files leave it
        overrides.append((("kafka", "bootstrap_servers"), _EnvText(env[ENV_BOOTSTRAP],
                                                                   ENV_BOOTSTRAP)))
    # Sorted so that the outcome does not depend on the environment's order; the
    # specific STAMP_WORKER__KAFKA__BOOTSTRAP_SERVERS comes after, so it wins.
    claimed: dict[tuple[str, ...], str] = {}
    for var, path in _env_paths(env, ENV_PREFIX, problems):
        if path in claimed:
            problems.append((var, f"sets {_key_path(*path)}, as {claimed[path]} does; "
                                  f"keep one of them"))
            continue
        claimed[path] = var
        overrides.append((path, _EnvText(env[var], var)))
    for path, value in overrides:
        node = tree
        for key in path[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                break  # the file's value is not a section: reported when building
            node = child
        else:
            node[path[-1]] = value
            origins[_key_path(*path)] = value.var
    return problems


def _unknown_keys(raw: Mapping[Any, Any], known: tuple[str, ...], prefix: str,
                  problems: list[tuple[str, str]]) -> None:
    for key in raw:
        if key not in known:
            where = prefix or "the top level"
            problems.append((_key_path(prefix, str(key)),
                             f"unknown key{_suggestion(str(key), known)} ({where} has: "
                             f"{', '.join(known)})"))


def _build_section(name: str, raw: Any, problems: list[tuple[str, str]]) -> Any:
    """One section from its raw mapping: an instance, ``_FAILED`` or ``_ABSENT``."""
    cls = _SECTION_TYPES[name]
    required = [item.name for item in fields(cls)
                if item.default is MISSING and item.default_factory is MISSING]
    if raw is None:  # absent, or "batch:" with nothing under it
        if not required:
            return _ABSENT
        raw = {}
    if not isinstance(raw, dict):
        problems.append((name, f"expected a mapping of keys ({', '.join(_SECTION_KEYS[name])})"
                               f", {_got(raw)}"))
        return _FAILED
    known = _SECTION_KEYS[name]
    _unknown_keys(raw, known, name, problems)
    if cls is PreprocessConfig:
        return _build_preprocessing(raw, problems)
    args = {key: raw.get(key, _MISSING) for key in known if key in raw or key in required}
    try:
        return cls(**args)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return _FAILED


def _build_preprocessing(raw: Mapping[Any, Any], problems: list[tuple[str, str]]) -> Any:
    args: dict[str, Any] = {}
    # Types here; ranges and policies are PreprocessConfig's own checks, wrapped below.
    checks: tuple[tuple[str, Callable[..., Any], dict[str, Any]], ...] = (
        ("crop_size", _integer, {"low": None, "unit": "pixels"}), ("non_square", _text, {}))
    for key, check, options in checks:
        if key in raw:
            try:
                args[key] = check(raw[key], **options)
            except _Bad as exc:
                problems.append((f"preprocessing.{key}", str(exc)))
                return _FAILED
    try:
        return PreprocessConfig(**args)
    except ValueError as exc:  # its own range and policy checks
        message = str(exc)
        key = next((key for key in args if message.startswith(key)), "")
        problems.append((_key_path("preprocessing", key), message.removeprefix(f"{key} ")
                         if key else message))
        return _FAILED


def _build(tree: dict[Any, Any], base_dir: Path | None) -> WorkerConfig:
    problems: list[tuple[str, str]] = []
    _unknown_keys(tree, _TOP_KEYS, "", problems)
    kwargs: dict[str, Any] = {}
    for name in _SECTION_TYPES:
        section = _build_section(name, tree.get(name), problems)
        if section is not _ABSENT:
            kwargs[name] = section
    for name in _TOP_KEYS:
        if name not in _SECTION_TYPES and name in tree:
            kwargs[name] = tree[name]
    model_path = kwargs.get("model_path")
    if (base_dir is not None and isinstance(model_path, str) and model_path.strip()
            and not isinstance(model_path, _EnvText)):
        # Relative to the file, so that a config and its model can move together.
        kwargs["model_path"] = base_dir / Path(model_path).expanduser()
    config = None
    try:
        config = WorkerConfig(**kwargs)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path | None = None,
                env: Mapping[str, str] | None = None) -> WorkerConfig:
    """Read, override and validate the worker's configuration.

    Parameters
    ----------
    path : str or Path, optional
        YAML file. None: the file ``$STAMP_WORKER_CONFIG`` names, else none (defaults
        and the environment only; ``kafka.bootstrap_servers`` and the ``topics`` must
        then come from the environment).
    env : Mapping[str, str], optional
        Environment to read ``STAMP_WORKER__...``, ``KAFKA_BOOTSTRAP_SERVERS`` and
        ``STAMP_WORKER_CONFIG`` from; None: :data:`os.environ`. Tests pass ``{}``.

    Returns
    -------
    WorkerConfig
        The frozen, validated configuration.

    Raises
    ------
    ConfigError
        Every problem found, each with its key path (and the variable that set it, when
        one did): a missing or malformed file, unknown keys, wrong types or ranges.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get(ENV_CONFIG_FILE) or None
    tree: dict[Any, Any] = {}
    base_dir = source = None
    if path is not None:
        file = Path(path).expanduser()
        source = str(file)
        tree = _read_yaml(file)  # its errors name the file themselves
        base_dir = file.absolute().parent
    origins: dict[str, str] = {}
    problems = _apply_env(tree, env, origins)
    try:
        config = _build(tree, base_dir)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError([(f"{key} (from {origins[key]})" if key in origins else key, message)
                           for key, message in problems], source=source)
    return config


def kafka_common_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``kafka.common`` properties that ``STAMP_WORKER__KAFKA__COMMON__*`` variables set.

    They are the cluster's security settings, for commands without a config file:
    ``stamp-worker replay`` and ``labels`` use them, so the variables that give the
    worker its credentials (a Kubernetes Secret) serve them too, and a password need not
    be typed on a command line (where ``ps`` shows it).

    Parameters
    ----------
    env : Mapping[str, str], optional
        The environment (default ``os.environ``).

    Returns
    -------
    dict
        Property → value, read as the worker reads them (``_`` for ``.`` in a name
        without dots; YAML 1.2 scalars).

    Raises
    ------
    ConfigError
        A variable whose name is not one property (``..._COMMON`` alone), naming it.
    """
    env = os.environ if env is None else env
    prefix = f"{ENV_PREFIX}KAFKA__COMMON"
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for var, path in _env_paths(env, prefix, problems):
        if path[:2] == ("kafka", "common"):
            out[path[2]] = env[var] if _is_secret(path[2]) else _scalar(env[var])
    if problems:
        raise ConfigError(problems)
    return out


def default_config(bootstrap_servers: str = "127.0.0.1:9092") -> WorkerConfig:
    """The embedded configuration of the demo: local broker, demo topics, bundled model.

    Parameters
    ----------
    bootstrap_servers : str
        Broker list, e.g. the one :mod:`worker.tools.devbroker` started.
    """
    return WorkerConfig(
        kafka=KafkaConfig(bootstrap_servers=bootstrap_servers),
        topics=TopicsConfig(input=("ztf-alerts",), output="stamp-classifier-labels",
                            dead_letter="stamp-classifier-dead-letter"))


def to_dict(config: WorkerConfig) -> dict[str, Any]:
    """The configuration as plain YAML/JSON-ready data, secrets redacted.

    The layout is the file's, so the output of a configuration without secrets loads
    back into an equal one. Redacted: ``sasl.password``, ``ssl.key.password``,
    ``ssl.key.pem``, ``basic.auth.user.info``, ``bearer.auth.token``,
    ``sasl.oauthbearer.config``, every property whose name holds ``password``, ``secret``
    or ``passphrase``, and the password in a URL (``https://user:<redacted>@host``).
    """
    def section(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in fields(obj):
            value = getattr(obj, item.name)
            if isinstance(value, Mapping):
                value = _redacted(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, str):
                value = _redact_url(value)
            out[item.name] = value
        return out

    data = section(config)
    for name in _SECTION_TYPES:
        data[name] = section(getattr(config, name))
    data["preprocessing"] = {key: data["preprocessing"][key]
                             for key in _SECTION_KEYS["preprocessing"]}
    data["model_path"] = None if config.model_path is None else str(config.model_path)
    return data
