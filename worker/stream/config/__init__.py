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

Where things are: :mod:`.values` checks one value (scalars, ranges, names, secrets),
:mod:`.sections` holds the dataclasses, :mod:`.loading` reads the file and the
environment into them.
"""

from worker.stream.config.loading import default_config, kafka_common_from_env, load_config, to_dict
from worker.stream.config.sections import (
    BASELINE_SUM_TOLERANCE,
    BUNDLED_MODEL_BASELINE,
    MAX_PROCESSES,
    MAX_WAIT_MS,
    AsteroidPolicy,
    BatchConfig,
    DriftConfig,
    KafkaConfig,
    MetricsConfig,
    RegistryConfig,
    TopicsConfig,
    WorkerConfig,
)
from worker.stream.config.values import (
    ENV_BOOTSTRAP,
    ENV_CONFIG_FILE,
    ENV_PREFIX,
    MAX_BATCH_MESSAGES,
    MAX_INSTANCE_ID,
    REDACTED,
    ConfigError,
)

__all__ = [
    "BASELINE_SUM_TOLERANCE", "BUNDLED_MODEL_BASELINE", "ENV_BOOTSTRAP", "ENV_CONFIG_FILE",
    "ENV_PREFIX", "MAX_BATCH_MESSAGES", "MAX_INSTANCE_ID", "MAX_PROCESSES", "MAX_WAIT_MS",
    "REDACTED", "AsteroidPolicy", "BatchConfig", "ConfigError", "DriftConfig", "KafkaConfig",
    "MetricsConfig", "RegistryConfig", "TopicsConfig", "WorkerConfig", "default_config",
    "kafka_common_from_env", "load_config", "to_dict",
]
