"""Who a worker is to Kafka: its static group member id and its transactional.id.

A worker restarted after a crash should take its predecessor's place at once: with
``instance_id`` its consumer rejoins the group as the same static member (no wait for the
dead member's session to time out), and with ``exactly_once`` its producer initializes the
same ``transactional.id``, which makes the broker abort the transaction the dead worker
left open instead of holding back read_committed readers until it times out.  Two *live*
workers must never share either id: they would fence each other, and
:func:`fenced_reason` turns that into one line for the operator.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from confluent_kafka import KafkaError, KafkaException

from worker.stream.config import MAX_PROCESSES, WorkerConfig

log = logging.getLogger("stamp_worker")
# Default transactional.id slots of one group on one host (claim_transactional_id): room
# for several commands of MAX_PROCESSES processes each.
TRANSACTIONAL_SLOTS = 4 * MAX_PROCESSES


class IdentityError(RuntimeError):
    """The worker's member or transactional id is, or would be, another live worker's."""


@dataclass
class TransactionalId:
    """A producer's ``transactional.id``, and the lock that keeps it to one live process.

    Attributes
    ----------
    value : str
        The id.
    lock : file or None
        The open, ``flock``-ed slot file of a default id; None for one from
        ``instance_id`` or where no lock could be taken.
    """

    value: str
    lock: IO[str] | None = None

    def release(self) -> None:
        """Give the id up (closing the file releases the lock)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def claim_transactional_id(config: WorkerConfig,
                           lock_dir: Path | None = None) -> TransactionalId:
    """The producer's ``transactional.id``: the same after a restart, one per live worker.

    A restarted worker that initializes its predecessor's id fences it: the broker aborts
    the transaction a killed predecessor left open at once, instead of holding back
    read_committed readers of the labels until ``transaction.timeout.ms`` (60 s by
    default) has passed.

    Parameters
    ----------
    config : WorkerConfig
        ``group_id`` and ``instance_id``.
    lock_dir : Path, optional
        Folder of the slot lock files; default the system's temporary folder.

    Returns
    -------
    TransactionalId
        ``<group_id>-<instance_id>`` when ``instance_id`` is set (keeping it unique among
        live workers is the operator's part; it is the group's static member id too).
        Otherwise ``<group_id>-<host name>-<slot>``: the slot is the lowest one of this
        group on this host whose lock file no live process holds.  The kernel releases
        an ``flock`` when its process dies, SIGKILL included, so two live workers on one
        host never share an id, and a worker restarted on the host takes a slot that a
        dead predecessor left.

    Raises
    ------
    IdentityError
        Every slot is held by a live worker.
    """
    if config.instance_id is not None:
        return TransactionalId(f"{config.group_id}-{config.instance_id}")
    host = socket.gethostname()
    folder = Path(tempfile.gettempdir()) if lock_dir is None else lock_dir
    digest = hashlib.sha1(f"{config.group_id}\0{host}".encode()).hexdigest()[:16]
    for slot in range(TRANSACTIONAL_SLOTS):
        value = f"{config.group_id}-{host}-{slot}"
        try:
            lock = open(folder / f"stamp-worker-txn-{digest}-{slot}.lock", "a+",  # noqa: SIM115
                        encoding="utf-8")
        except PermissionError:  # another user's: that slot is not ours to judge
            continue
        except OSError as exc:
            log.warning("cannot keep the transactional.id %r to this process (%s): two "
                        "workers of group %s on this host would fence each other; give "
                        "each its own instance_id", value, exc, config.group_id)
            return TransactionalId(value)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live worker
            lock.close()
            continue
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {value}\n")  # for whoever looks
        lock.flush()
        return TransactionalId(value, lock)
    raise IdentityError(f"all {TRANSACTIONAL_SLOTS} transactional.id slots of group "
                        f"{config.group_id!r} on host {host} are held by live workers; stop "
                        f"some, or give each its own instance_id")


def fenced_reason(error: BaseException, config: WorkerConfig,
                  transactional_id: str | None) -> str | None:
    """What to tell the operator when ``error`` means another worker took this one's place.

    Parameters
    ----------
    error : BaseException
        What stopped the worker.
    config : WorkerConfig
        ``group_id`` and ``instance_id``, for the message.
    transactional_id : str or None
        The producer's id (``exactly_once``).

    Returns
    -------
    str or None
        One line naming the cause and the fix; None for any other error.
    """
    if not (isinstance(error, KafkaException) and error.args
            and isinstance(error.args[0], KafkaError)):
        return None
    code, text = error.args[0].code(), error.args[0].str()
    if code == KafkaError.FENCED_INSTANCE_ID or (code == KafkaError._FATAL
                                                 and "group.instance.id" in text):
        return (f"another worker joined group {config.group_id!r} with this one's "
                f"group.instance.id {config.instance_id!r} and took its partitions: each "
                f"live worker needs its own instance_id (e.g. its pod name)")
    if transactional_id is not None and (
            code in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                     KafkaError.INVALID_PRODUCER_EPOCH)
            or (code == KafkaError._FATAL and "fenced" in text.lower())):
        fix = (f"each live worker needs its own instance_id (this one has "
               f"{config.instance_id!r})" if config.instance_id is not None
               else f"two workers of group {config.group_id!r} run on hosts with the same "
                    f"name ({socket.gethostname()}) and different temporary folders "
                    f"(containers?): give each its own instance_id")
        return (f"another worker started with this one's transactional.id "
                f"{transactional_id!r} and fenced it: {fix}")
    return None
