"""Real alerts + a labels CSV → a labelled dataset, through the worker's own decoding.

This is how a broker turns its archive and its cross-matches into training data:
``stamp-train dataset ALERTS... --labels labels.csv --out real.npz``.  The alerts are
read by :mod:`worker.decode.sources` (files, folders, tar archives, Parquet tables), decoded by
the worker's :class:`~worker.labeller.Labeller` and cut out by
:func:`worker.prepare.stamps.decode_stamps`; the dataset keeps the full-size stamps and the raw
metadata features, and training preprocesses them with the worker's
:func:`~worker.prepare.stamps.preprocess_batch` — so a dataset example becomes exactly the model
input the worker would compute for that alert (a test checks it bit for bit).

The labels CSV has a ``label`` column (AGN, SN, VS, asteroid, bogus; empty =
unlabelled) and a ``candid`` or an ``objectId`` column (or both): a row with a candid
labels that alert, a row with only an objectId labels every alert of that object.
Optional columns ``tier`` (how sure the label is) and ``source`` (where it came from)
are carried into the dataset for per-tier reports and grouping.

Alerts that cannot be used are listed with their reason (``refused``): undecodable
records, stamps the worker refuses, alerts without a label, duplicates of an alert
already taken (the same candid in two files).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import CLASS_NAMES, DatasetError, StampDataset
from worker.decode.errors import AlertError
from worker.decode.sources import Payload, SourceError, expand_paths, read_inputs
from worker.labeller import Labeller
from worker.prepare.features import FEATURE_NAMES, metadata_features
from worker.prepare.stamps import PreprocessConfig, decode_stamps, preprocess_batch
from worker.stream.output import Source


@dataclass(frozen=True)
class LabelRow:
    """One labelled row of a labels CSV.

    Attributes
    ----------
    label : int
        Class index into :data:`CLASS_NAMES`.
    tier : str
        Label quality tier ("" when the CSV has none).
    source : str
        Where the label or the alert came from ("" when the CSV has none).
    line : int
        Line number in the CSV (for messages).
    """

    label: int
    tier: str
    source: str
    line: int


@dataclass
class Labels:
    """Labels by candid and by objectId, as read from a labels CSV."""

    by_candid: dict[int, LabelRow] = field(default_factory=dict)
    by_object: dict[str, LabelRow] = field(default_factory=dict)
    unlabelled: int = 0

    def lookup(self, candid: int, object_id: str) -> LabelRow | None:
        """The label of an alert: by its candid first, else by its object."""
        row = self.by_candid.get(candid)
        return row if row is not None else self.by_object.get(object_id)

    def __len__(self) -> int:
        return len(self.by_candid) + len(self.by_object)


class _EveryAlert(Labels):
    """Labels that take every alert, with a placeholder label (class 0, no tier)."""

    _ROW = LabelRow(0, "", "", 0)

    def lookup(self, candid: int, object_id: str) -> LabelRow | None:
        return self._ROW


def read_labels(path: str | Path) -> Labels:
    """Read a labels CSV (see the module docstring for its columns).

    Raises
    ------
    DatasetError
        Missing file, no ``label`` column, neither ``candid`` nor ``objectId``, an
        unknown class name, a bad candid, or one alert given two different labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such labels file")
    labels = Labels()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        if "label" not in columns or not columns & {"candid", "objectId"}:
            raise DatasetError(f"{path}: a labels CSV needs a 'label' column and a 'candid' "
                               f"or 'objectId' column; it has {sorted(columns)}")
        for line, row in enumerate(reader, start=2):
            name = (row.get("label") or "").strip()
            if not name:
                labels.unlabelled += 1
                continue
            if name not in CLASS_NAMES:
                raise DatasetError(f"{path}:{line}: unknown label {name!r} "
                                   f"(expected one of {', '.join(CLASS_NAMES)})")
            entry = LabelRow(CLASS_NAMES.index(name), (row.get("tier") or "").strip(),
                             (row.get("source") or "").strip(), line)
            candid_text = (row.get("candid") or "").strip()
            object_id = (row.get("objectId") or "").strip()
            if candid_text:
                try:
                    key: int | str = int(candid_text)
                except ValueError:
                    raise DatasetError(f"{path}:{line}: candid {candid_text!r} is not an "
                                       "integer") from None
                table: dict = labels.by_candid
            elif object_id:
                key, table = object_id, labels.by_object
            else:
                raise DatasetError(f"{path}:{line}: row has a label but neither candid nor "
                                   "objectId")
            old = table.get(key)
            if old is not None and old.label != entry.label:
                raise DatasetError(f"{path}:{line}: {key} is labelled "
                                   f"{CLASS_NAMES[entry.label]} here and "
                                   f"{CLASS_NAMES[old.label]} on line {old.line}")
            table.setdefault(key, entry)
    return labels


@dataclass
class BuildReport:
    """What :func:`build_dataset` read, took and refused.

    Attributes
    ----------
    records : int
        Alert records read.
    refused : list of (str, str, str)
        ``(origin, reason, detail)`` per alert not taken.
    """

    records: int = 0
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        """Number of refused alerts per reason."""
        out: dict[str, int] = {}
        for _, reason, _ in self.refused:
            out[reason] = out.get(reason, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def build_dataset(payloads: Iterable[Payload], labels: Labels,
                  preprocess: PreprocessConfig | None = None,
                  report: BuildReport | None = None) -> StampDataset:
    """Decode labelled alerts into a dataset, refusing what the worker would refuse.

    Parameters
    ----------
    payloads : iterable of Payload
        Alert messages (from :func:`worker.decode.sources.iter_payloads`).
    labels : Labels
        The labels (:func:`read_labels`).
    preprocess : PreprocessConfig, optional
        Stamp size, non-square policy and limits (the worker's defaults).
    report : BuildReport, optional
        Filled with the count of records and the refused alerts.

    Returns
    -------
    StampDataset
        Full-size stamps (N, 63, 63, 3), labels, raw features, and per example the
        object id, candid, tier and source (the label's, else the input's parent
        folder name).
    """
    preprocess = preprocess or PreprocessConfig()
    report = report if report is not None else BuildReport()
    labeller = Labeller(None, preprocess=preprocess)
    images: list[np.ndarray] = []
    rows: list[tuple[int, np.ndarray, str, int, str, str]] = []
    seen: dict[int, str] = {}
    nowhere = Source("", -1, -1, -1)
    for payload in payloads:
        parsed, rejected = labeller.parse(payload.data, nowhere, 0)
        report.records += len(parsed) + len(rejected)
        for bad in rejected:
            report.refused.append((payload.origin, bad.error.reason.value, bad.error.detail))
        for item in parsed:
            alert = item.alert
            origin = payload.origin
            if item.record_index is not None:
                origin = f"{origin}#{item.record_index}"
            row = labels.lookup(alert.candid, alert.object_id)
            if row is None:
                report.refused.append((origin, "unlabelled",
                                       f"{alert.object_id} candid {alert.candid}"))
                continue
            if alert.candid in seen:
                report.refused.append((origin, "duplicate",
                                       f"candid {alert.candid} already read from "
                                       f"{seen[alert.candid]}"))
                continue
            try:
                stamps, _ = decode_stamps(alert, preprocess)
                _, errors = preprocess_batch([stamps], preprocess.crop_size)
                if errors[0] is not None:
                    raise errors[0]
            except AlertError as err:
                report.refused.append((origin, err.reason.value, err.detail))
                continue
            seen[alert.candid] = origin
            images.append(np.stack(stamps, axis=-1).astype(np.float32, copy=False))
            source = row.source or Path(payload.origin.split("!")[0]).parent.name
            rows.append((row.label, metadata_features(alert.candidate), alert.object_id,
                         alert.candid, row.tier, source))
    size = preprocess.stamp_size
    if not rows:
        return StampDataset(np.zeros((0, size, size, 3), np.float32),
                            np.zeros(0, np.int64),
                            np.zeros((0, len(FEATURE_NAMES)), np.float32))
    return StampDataset(
        np.stack(images), np.array([r[0] for r in rows], np.int64),
        np.stack([r[1] for r in rows]).astype(np.float32),
        object_ids=np.array([r[2] for r in rows]), candids=np.array([r[3] for r in rows],
                                                                    np.int64),
        tiers=np.array([r[4] for r in rows]), sources=np.array([r[5] for r in rows]))


def dataset_from_alerts(paths: Sequence[str | Path], labels_csv: str | Path | None,
                        on_unreadable: Callable[[str, str], None] | None = None,
                        report: BuildReport | None = None) -> StampDataset:
    """Read alert inputs and a labels CSV into a dataset (the ``stamp-train dataset`` core).

    Parameters
    ----------
    paths : sequence of str or Path
        Alert files, folders, tar archives or Parquet tables.
    labels_csv : str or Path or None
        The labels CSV.  None: every alert is taken, with a placeholder label (class 0)
        — for uses that need no labels (calibrating ``stamp-train quantize``).
    on_unreadable : callable, optional
        ``on_unreadable(origin, message)`` for an input that cannot be read (a corrupt
        archive); reading goes on.  Default: such inputs are added to ``report.refused``.
    report : BuildReport, optional
        Filled as by :func:`build_dataset`.

    Raises
    ------
    DatasetError
        A path or the labels file is missing, or the labels CSV is malformed.
    """
    report = report if report is not None else BuildReport()
    # Checked before any alert is read.
    labels = read_labels(labels_csv) if labels_csv is not None else _EveryAlert()
    try:
        files = expand_paths(paths)
    except SourceError as exc:
        raise DatasetError(str(exc)) from exc

    def unreadable(origin: str, message: str) -> None:
        report.refused.append((origin, "unreadable_input", message))

    return build_dataset(read_inputs(files, on_unreadable or unreadable), labels,
                         report=report)
