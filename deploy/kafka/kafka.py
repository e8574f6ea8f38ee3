"""Start, stop or query the single-node development Kafka broker (KRaft).

Usage::

    python deploy/kafka/kafka.py start [--port N] [--dir D]   # prints KAFKA_BOOTSTRAP_SERVERS=...
    python deploy/kafka/kafka.py start --sasl-ssl   # also TLS + SCRAM-SHA-512: D/tls/client.env
    python deploy/kafka/kafka.py status [--dir D]
    python deploy/kafka/kafka.py stop [--wipe] [--dir D]   # --wipe: delete every topic too

The default folder is ``.cache/kafka/run`` in the repository.  The implementation is
:mod:`worker.tools.devbroker` (installed with the project, so this script needs no path set-up);
the broker's jars are listed in ``pom.xml`` beside this file.
"""

import sys

try:
    from worker.tools.devbroker import main
except ImportError as exc:  # run by a Python that does not have the project installed
    sys.exit(f"{exc}: run this with the project's Python (.venv/bin/python "
             "deploy/kafka/kafka.py ..., or make kafka-start / kafka-stop), or install the "
             "project first (pip install -e .)")

if __name__ == "__main__":
    sys.exit(main())
