"""Checking one configuration value.

YAML 1.2 scalars, numbers and their ranges, topic names, broker addresses, librdkafka
booleans, secrets and their redaction, and :class:`_Checks`, which gathers every problem
of a section into one :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

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


def _redacted_value(value: Any) -> Any:
    """A field's value as it may be shown: secrets in a dictionary and in a URL hidden."""
    if isinstance(value, Mapping):
        return _redacted(value)
    if isinstance(value, str):
        return _redact_url(value)
    return value


def _redacting_repr(obj: Any) -> str:
    parts = [f"{item.name}={_redacted_value(getattr(obj, item.name))!r}"
             for item in fields(obj)]
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
