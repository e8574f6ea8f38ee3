"""Reading a configuration: the YAML 1.2 file, then the environment over it.

Every problem is gathered into one :class:`ConfigError`; :func:`to_dict` is the way back
(secrets redacted).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml

from worker.prepare.stamps import PreprocessConfig
from worker.stream.config.sections import _SECTION_TYPES, KafkaConfig, TopicsConfig, WorkerConfig
from worker.stream.config.values import (
    _ABSENT,
    _FAILED,
    _FLOAT_TEXT,
    _INT_TEXT,
    _MISSING,
    ENV_BOOTSTRAP,
    ENV_CONFIG_FILE,
    ENV_PREFIX,
    ConfigError,
    _Bad,
    _env_name,
    _EnvText,
    _fail,
    _got,
    _integer,
    _is_secret,
    _key_path,
    _redacted_value,
    _scalar,
    _suggestion,
    _text,
)

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
            value = _redacted_value(getattr(obj, item.name))
            out[item.name] = list(value) if isinstance(value, tuple) else value
        return out

    data = section(config)
    for name in _SECTION_TYPES:
        data[name] = section(getattr(config, name))
    data["preprocessing"] = {key: data["preprocessing"][key]
                             for key in _SECTION_KEYS["preprocessing"]}
    data["model_path"] = None if config.model_path is None else str(config.model_path)
    return data
