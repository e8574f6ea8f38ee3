"""Writer schemas for Confluent-framed messages, from a Confluent-compatible schema registry.

The HTTP side (``GET /schemas/ids/{id}``, authentication, TLS, caching by id) is
confluent-kafka's own :class:`~confluent_kafka.schema_registry.SchemaRegistryClient`;
this module only maps its outcomes onto the worker's error policy: an id the registry
does not know is a property of the message (dead-letter it), a registry that does not
answer is an outage (stop and retry later, commit nothing).
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from worker.decode.errors import AlertError, Reason, SchemaRegistryUnavailable


class ConfluentSchemaRegistry:
    """Fetch Avro writer schemas by id from a schema registry.

    Parameters
    ----------
    url : str
        Base URL of the registry, e.g. ``http://127.0.0.1:8081``.
    client_config : Mapping[str, str], optional
        Extra :class:`SchemaRegistryClient` settings (``basic.auth.user.info``,
        ``ssl.ca.location``, ``timeout``...), passed through unchanged.
    """

    def __init__(self, url: str, client_config: Mapping[str, str] | None = None) -> None:
        self._client = SchemaRegistryClient({"url": url, **(client_config or {})})

    def schema_for_id(self, schema_id: int) -> str:
        """Return the Avro schema JSON registered under ``schema_id``.

        Raises
        ------
        AlertError
            Reason ``unknown_schema_id`` (404) or ``bad_schema`` (not an Avro schema).
        SchemaRegistryUnavailable
            Connection failures and server errors.
        """
        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise AlertError(Reason.UNKNOWN_SCHEMA_ID,
                                 f"schema id {schema_id} is not in the registry") from exc
            raise SchemaRegistryUnavailable(
                f"schema registry answered {exc.http_status_code} for id {schema_id}: "
                f"{exc.error_message}") from exc
        except Exception as exc:  # httpx transport errors, timeouts, DNS...
            raise SchemaRegistryUnavailable(
                f"schema registry unreachable for id {schema_id}: {exc}") from exc
        if schema.schema_type not in (None, "AVRO"):
            raise AlertError(Reason.BAD_SCHEMA,
                             f"schema id {schema_id} is {schema.schema_type}, not AVRO")
        return schema.schema_str
