"""Bytes → alerts: Avro messages, archived files and tables decoded into :class:`Alert` values.

No Kafka here: the streaming worker, ``classify`` and ``replay`` all read alerts through it.
"""
