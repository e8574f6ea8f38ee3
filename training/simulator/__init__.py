"""Simulated, labelled ZTF alert stamp triplets: tests, the demo and the default model.

Each simulated alert is a science / template / difference triplet of 63×63 float32
stamps in ZTF units (DN) plus a complete candidate record, for five classes:

* **AGN** – a variable point source at the nucleus of a galaxy (the host sometimes
  faint or absent); brighter or fainter than in the template.
* **SN** – a new point source on an extended Sérsic/exponential host, offset by 0.3–3
  effective radii (15 % near the nucleus, some hosts faint or absent).
* **VS** – a star present in the template whose flux changed (up or down).
* **asteroid** – a point source in the science image only, no template counterpart,
  some slightly trailed; most have a known solar-system match (``ssdistnr``/``ssnamenr``).
* **bogus** – real artifact kinds (:data:`BOGUS_KINDS`): cosmic rays, bad columns/rows,
  misalignment dipoles, saturated-star residuals, NaN edge regions, low-SNR blobs.

All scenes share measured observing conditions: sky and noise of the three stamps,
seeing, zero point, limiting magnitude and the NaN regions of real stamps, measured on
the real alerts of the shared data folder with :func:`measure_real_statistics` (the
numbers are :data:`MEASURED`; a test re-measures them when the data is present).  Fields
hold PS1-like neighbours (stars and galaxies, denser towards the Galactic plane), and
the candidate record is built from the same scene: PS1 and reference-catalogue matches
(``sgscore``/``distpsnr``/``distnr``/``magnr``), PSF photometry measured on the
simulated difference stamp, seeing, detection history and sky position.

As in real ZTF alerts, **the difference stamp always shows the detection positive**: a
negative subtraction (``isdiffpos = 'f'``, the source fainter than in the template) is
cut from template − science.  Measured on the shared data: the centre of the difference
stamp is positive in all 410 full-size real alerts, 141 of which are ``'f'``.  The sign of
the change is carried by ``isdiffpos`` and by science − template, not by the difference.

Modules
-------
constants
    Classes, stamp geometry, :data:`MEASURED` and the parameters derived from it.
profiles
    Moffat PSFs, Sérsic galaxies, subtraction residuals, PSF photometry.
scene
    Observing conditions, sky positions, the catalogue of a scene, the signal planes.
sources
    AGN, SN, variable stars and asteroids, with their host galaxies.
bogus
    The artifacts of bogus alerts (:data:`BOGUS_KINDS`).
artifacts
    Neighbours, NaN masks and noise: what every field adds around the candidate.
candidates
    Candidate fields and records, Avro alert payloads (:func:`to_alert_payloads`).
simulation
    :func:`simulate` and :func:`simulate_with_truth`, one chunk of scenes at a time.
statistics
    :func:`stamp_statistics`, loading and measuring the real alerts.
"""

# The public names, here so that ``from training.simulator import X`` does not depend on
# which module holds X.
from training.simulator.candidates import SIM_CANDID_BASE, to_alert_payloads
from training.simulator.constants import (
    AGN,
    ASTEROID,
    BOGUS,
    BOGUS_KINDS,
    CENTRE,
    DIFFERENCE_NOISE_RATIO,
    DRB_FIRST_JD,
    JD_RANGE,
    JD_ZTF_START,
    MEASURED,
    MEASUREMENT_TOLERANCES,
    MOFFAT_BETA,
    NOISE_LAW_INTERCEPT,
    PIXEL_SCALE,
    PS1_DEPTH,
    QUADRANT_SHAPE,
    R_BAND_FRACTION,
    SATURATION_DN,
    SEED_CLASS_FRACTIONS,
    SEEING_FWHM,
    SEEING_SPREAD,
    SN,
    STAMP_SIZE,
    TEMPLATE_FWHM,
    TEMPLATE_FWHM_SPREAD,
    TEMPLATE_LAG1,
    TEMPLATE_NOISE_RATIO,
    VS,
    ZERO_POINT,
)
from training.simulator.simulation import SimulatedStamps, simulate, simulate_with_truth
from training.simulator.statistics import (
    load_real_alerts,
    measure_real_statistics,
    stamp_statistics,
)
from worker.model.artifact import CLASS_NAMES  # label = index

__all__ = [
    "AGN", "ASTEROID", "BOGUS", "BOGUS_KINDS", "CENTRE", "CLASS_NAMES",
    "DIFFERENCE_NOISE_RATIO", "DRB_FIRST_JD", "JD_RANGE", "JD_ZTF_START", "MEASURED",
    "MEASUREMENT_TOLERANCES", "MOFFAT_BETA", "NOISE_LAW_INTERCEPT", "PIXEL_SCALE",
    "PS1_DEPTH", "QUADRANT_SHAPE", "R_BAND_FRACTION", "SATURATION_DN",
    "SEED_CLASS_FRACTIONS", "SEEING_FWHM", "SEEING_SPREAD", "SIM_CANDID_BASE", "SN",
    "STAMP_SIZE", "TEMPLATE_FWHM", "TEMPLATE_FWHM_SPREAD", "TEMPLATE_LAG1",
    "TEMPLATE_NOISE_RATIO", "VS", "ZERO_POINT", "SimulatedStamps", "load_real_alerts",
    "measure_real_statistics", "simulate", "simulate_with_truth", "stamp_statistics",
    "to_alert_payloads",
]
