"""Alert message → label records: the classification core shared by every command.

The streaming worker (:mod:`worker.stream.pipeline`) and the offline ``classify`` command
(:mod:`worker.tools.classify`) both go through :class:`Labeller`, so one alert gets the same
decoding, preprocessing, policy, model call and label record whichever way it comes in.
Kafka, files and output formats stay outside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.errors import AlertError
from worker.model.artifact import CLASS_NAMES, StampModel
from worker.prepare.features import metadata_features
from worker.prepare.stamps import (
    PREPROCESSING_VERSION,
    ModelInput,
    PreprocessConfig,
    decode_stamps,
    native_input,
    preprocess_batch,
)
from worker.stream.config import AsteroidPolicy
from worker.stream.output import Source, label_record

ASTEROID = CLASS_NAMES.index("asteroid")


@dataclass(slots=True)
class Work:
    """One decoded alert waiting for the model.

    Attributes
    ----------
    alert : Alert
        The decoded alert.
    source : Source
        Where its message came from.
    prepared : ModelInput or None
        Model input; None when the asteroid policy labels it without the model.
    consumed_at_ms : int
        When its message was read [ms since Unix epoch].
    tag : int
        The caller's reference, from :class:`Parsed`.
    """

    alert: Alert
    source: Source
    prepared: ModelInput | None
    consumed_at_ms: int
    tag: int = 0


@dataclass(slots=True)
class Parsed:
    """A decoded alert record whose cutouts are not yet decompressed.

    Attributes
    ----------
    alert : Alert
        The decoded alert.
    source : Source
        Where its message came from.
    consumed_at_ms : int
        When its message was read [ms since Unix epoch].
    record_index : int or None
        Position in a multi-record message (None for a single record).
    tag : int
        The caller's reference (the worker: the message's position in its batch).
    """

    alert: Alert
    source: Source
    consumed_at_ms: int
    record_index: int | None
    tag: int = 0


@dataclass(slots=True)
class Rejected:
    """A record that cannot be labelled, with the error that says why.

    Attributes
    ----------
    error : AlertError
        Reason and detail.
    record_index : int or None
        Position of the record in a multi-record message (None for a single record).
    """

    error: AlertError
    record_index: int | None


@dataclass(slots=True)
class Outcome:
    """The model's (or the policy's) answer for one alert.

    Five probabilities in :data:`CLASS_NAMES` order (plain floats), the method and the
    flags.
    """

    probabilities: list[float]
    method: str
    flags: list[str]


def known_asteroid(alert: Alert, max_distance_arcsec: float,
                   max_magnitude: float | None) -> bool:
    """Whether a known solar-system object lies within ``max_distance_arcsec`` of the alert.

    ZTF writes ``ssnamenr`` "null" and ``ssdistnr`` -999 when there is none.

    Parameters
    ----------
    alert : Alert
        The alert.
    max_distance_arcsec : float
        Largest distance to the known object [arcsec].
    max_magnitude : float or None
        Faintest predicted magnitude of the known object [mag]; None: no cut.
    """
    name = alert.candidate.get("ssnamenr")
    distance = alert.candidate.get("ssdistnr")
    if not isinstance(name, str) or name.strip().lower() in ("", "null"):
        return False
    if not isinstance(distance, (int, float)) or not 0 <= distance <= max_distance_arcsec:
        return False
    magnitude = alert.candidate.get("ssmagnr")
    if max_magnitude is not None and isinstance(magnitude, (int, float)) and magnitude > 0:
        return magnitude <= max_magnitude
    return True


class Labeller:
    """Decode alert messages, run the model on a batch, and build label records.

    Parameters
    ----------
    model : StampModel or None
        The loaded model (its manifest gives the preprocessing); None in a process that
        only decodes (:meth:`parse`, :meth:`prepare`).
    decoder : AlertDecoder, optional
        Alert decoder (one with a schema registry for Confluent-framed input).
    asteroid_policy : AsteroidPolicy, optional
        Label known solar-system objects without the model (off by default).
    preprocess : PreprocessConfig, optional
        The preprocessing, when there is no model to give it.
    on_predictions : callable, optional
        Called by :meth:`infer` with each model call's (N, 5) probability array (N ≥ 1),
        e.g. :meth:`worker.stream.metrics.WorkerMetrics.observe_predictions`: the drift metrics
        then cost one array operation per batch, not Python work per alert.  Alerts the
        asteroid policy labels are not predictions and are not passed.
    """

    def __init__(self, model: StampModel | None, decoder: AlertDecoder | None = None,
                 asteroid_policy: AsteroidPolicy | None = None,
                 preprocess: PreprocessConfig | None = None,
                 on_predictions: Callable[[np.ndarray], None] | None = None) -> None:
        if model is None and preprocess is None:
            raise ValueError("a Labeller needs a model, or a preprocessing to decode only")
        self.model = model
        self.preprocess = preprocess if preprocess is not None else model.preprocess
        self.decoder = decoder or AlertDecoder()
        self.policy = asteroid_policy or AsteroidPolicy()
        self.on_predictions = on_predictions

    def decode(self, payload: bytes, source: Source, consumed_at_ms: int
               ) -> tuple[list[Work], list[Rejected]]:
        """Decode and preprocess every record of one message (:meth:`decode_batch` of one).

        Parameters
        ----------
        payload : bytes
            The message value (or file content).
        source : Source
            Where it came from.
        consumed_at_ms : int
            When it was read [ms since Unix epoch].

        Returns
        -------
        (list of Work, list of Rejected)
            Records ready for :meth:`infer`, and records refused with their reasons.
        """
        work, refused = self.decode_batch([(payload, source, consumed_at_ms, 0)])
        return work, [r for _, r in refused]

    def decode_batch(self, items: Sequence[tuple[bytes, Source, int, int]]
                     ) -> tuple[list[Work], list[tuple[int, Rejected]]]:
        """Decode the messages of a batch, with one vectorized preprocessing call.

        Parameters
        ----------
        items : sequence of (bytes, Source, int, int)
            Message value, source, time it was consumed [ms since Unix epoch], and the
            caller's tag (e.g. the message's position in the batch).

        Returns
        -------
        (list of Work, list of (int, Rejected))
            Records ready for :meth:`infer` in input order, and the refused records
            with their message's tag, in message order.
        """
        parsed: list[Parsed] = []
        refused: list[tuple[int, Rejected]] = []
        for payload, source, consumed_at_ms, tag in items:
            good, bad = self.parse(payload, source, consumed_at_ms, tag)
            parsed += good
            refused += [(tag, r) for r in bad]
        work, rejected = self.prepare(parsed)
        refused += [(p.tag, r) for p, r in rejected]
        refused.sort(key=lambda pair: pair[0])  # stable: a message's records keep order
        return work, refused

    def parse(self, payload: bytes, source: Source, consumed_at_ms: int, tag: int = 0
              ) -> tuple[list[Parsed], list[Rejected]]:
        """Avro-decode every record of one message (cutouts stay compressed).

        Parameters
        ----------
        payload : bytes
            The message value (or file content).
        source : Source
            Where it came from.
        consumed_at_ms : int
            When it was read [ms since Unix epoch].
        tag : int
            Caller's reference carried by each :class:`Parsed` (e.g. the message's
            position in a batch).

        Returns
        -------
        (list of Parsed, list of Rejected)
            Decoded records, and records refused with their reasons.
        """
        parsed: list[Parsed] = []
        rejected: list[Rejected] = []
        items = list(self.decoder.iter_records(payload))
        for index, item in enumerate(items):
            record_index = index if len(items) > 1 else None
            if isinstance(item, AlertError):
                rejected.append(Rejected(item, record_index))
            else:
                parsed.append(Parsed(item, source, consumed_at_ms, record_index, tag))
        return parsed, rejected

    def prepare(self, parsed: Sequence[Parsed]) -> tuple[list[Work], list[tuple[Parsed, Rejected]]]:
        """Cutouts → model inputs (or the asteroid policy) for decoded records.

        Mostly gunzip and numpy, which release the GIL: a thread can run this while
        another parses the next messages.

        Returns
        -------
        (list of Work, list of (Parsed, Rejected))
            Records ready for :meth:`infer` in input order, and the records refused.
        """
        refused: list[tuple[Parsed, Rejected]] = []
        policy = self.policy
        # Input order is kept: a slot is a finished Work (asteroid policy) or an alert
        # whose stamps wait for the one vectorized preprocessing call of the batch.
        slots: list[Work | tuple[Parsed, list[np.ndarray], bool]] = []
        for item in parsed:
            alert = item.alert
            if policy.enabled and known_asteroid(alert, policy.max_ssdistnr_arcsec,
                                                 policy.max_ssmagnr):
                slots.append(Work(alert, item.source, None, item.consumed_at_ms, item.tag))
                continue
            # The compiled path (gunzip to normalized image in one call), when it applies;
            # else the stamps join the batch's vectorized preprocessing below.
            prepared = native_input(alert, self.preprocess)
            if prepared is not None:
                slots.append(Work(alert, item.source, prepared, item.consumed_at_ms, item.tag))
                continue
            try:
                stamps, padded = decode_stamps(alert, self.preprocess)
            except AlertError as err:
                refused.append((item, Rejected(err, item.record_index)))
                continue
            slots.append((item, stamps, padded))
        waiting = [slot for slot in slots if not isinstance(slot, Work)]
        images, errors = preprocess_batch([stamps for _, stamps, _ in waiting],
                                          self.preprocess.crop_size)
        done = iter(zip(images, errors, strict=True))
        work: list[Work] = []
        for slot in slots:
            if isinstance(slot, Work):
                work.append(slot)
                continue
            item, _, padded = slot
            image, error = next(done)
            if error is not None:
                refused.append((item, Rejected(error, item.record_index)))
                continue
            prepared = ModelInput(image=image, features=metadata_features(item.alert.candidate),
                                  padded=padded)
            work.append(Work(item.alert, item.source, prepared, item.consumed_at_ms, item.tag))
        return work, refused

    def infer(self, work: Sequence[Work]) -> list[Outcome]:
        """One model call for every alert of a batch that needs the model.

        Returns
        -------
        list of Outcome
            In the order of ``work``.
        """
        cnn = [w.prepared for w in work if w.prepared is not None]
        probs = (self.model.predict(np.stack([p.image for p in cnn]),
                                    np.stack([p.features for p in cnn]))
                 if cnn else np.zeros((0, len(CLASS_NAMES)), np.float32))
        if cnn and self.on_predictions is not None:
            self.on_predictions(probs)
        # Python floats once per batch: a label record wants floats, and per-alert
        # numpy scalars cost more than the rest of the record.
        rows = iter(probs.tolist())
        policy_probs = [1.0 if c == ASTEROID else 0.0 for c in range(len(CLASS_NAMES))]
        out = []
        for item in work:
            if item.prepared is None:
                out.append(Outcome(policy_probs, "asteroid_policy", []))
            else:
                out.append(Outcome(next(rows), "cnn",
                                   ["stamp_padded"] if item.prepared.padded else []))
        return out

    def record(self, item: Work, outcome: Outcome, published_at_ms: int) -> dict:
        """The label record (``schemas/label.avsc``) of one alert.

        Parameters
        ----------
        item : Work
            The alert and its source.
        outcome : Outcome
            Its probabilities and how they were obtained.
        published_at_ms : int
            Publication time [ms since Unix epoch].
        """
        return label_record(item.alert, outcome.probabilities, outcome.method,
                            self.model.name, self.model.version, PREPROCESSING_VERSION,
                            outcome.flags, item.consumed_at_ms, published_at_ms, item.source)
