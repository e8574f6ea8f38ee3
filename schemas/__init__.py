"""The project's Avro schemas (``*.avsc`` JSON files), shipped as package data.

``alert_projection.avsc``
    The fields of a ZTF alert the classifier reads (a reader/projection schema).
``ztf_alert_synthetic.avsc``
    A ZTF-compatible writer schema used to build alerts for tests and the simulator.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any


def load_schema(name: str) -> dict[str, Any]:
    """Return one of the project's schemas as a JSON dict.

    Parameters
    ----------
    name : str
        File name inside this package, e.g. ``"alert_projection.avsc"``.

    Returns
    -------
    dict
        The parsed JSON document (not yet parsed by fastavro).
    """
    return json.loads(files(__name__).joinpath(name).read_text(encoding="utf-8"))
