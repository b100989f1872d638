"""Calibration that travels with the model: what ``score.py --store_calibration=...`` fitted,
written into the model folder, and the calibrated LLR of one new pair from it.

Two files in the model folder, both written atomically, the statistics first:

- ``calibration_statistics.npz``: ``mean`` (the training mean embedding, float64 [D],
  subtracted before the cosine) and ``cohort`` (the speaker-mean cohort in scoring space,
  float32 [K, D], for AS-norm and the imposter-mean quality measure);
- ``calibration.json``: ``kind`` (``logistic`` or ``qmf``), ``scoring`` (``cosine`` or
  ``asnorm``), ``prior`` (the effective prior of the fit), the fitted
  :class:`sb_sphereface2.scoring.calibration.LogisticCalibration`, its quality measures,
  ``top_n``, ``max_duration``, the trial list it was fitted on (path and sha256), the
  ``embedding_model.ckpt`` sha256 it belongs to and the statistics file's sha256.

:func:`pair_llr` scores a pair as ``python -m sb_sphereface2.scoring`` scores a trial
(:func:`sb_sphereface2.scoring.trial_scores.score_trial_list` and
:func:`sb_sphereface2.scoring.quality.quality_features` on a one-trial list), so a stored
calibration gives the LLR ``score.py`` would have given.
"""

import json
import os

import numpy as np

from sb_sphereface2.files import atomic_write, file_sha256, write_json_atomic

__all__ = ["CALIBRATION_FILE", "STATISTICS_FILE", "SCORINGS", "store_calibration", "load_calibration", "pair_llr"]

CALIBRATION_FILE = "calibration.json"
STATISTICS_FILE = "calibration_statistics.npz"
SCORINGS = ("cosine", "asnorm")


def store_calibration(model_folder, calibration_json, train_embeddings, scoring, trial_list, quality_measures=(),
                      top_n=300, max_duration=None):
    """Write a fitted calibration and the statistics its scores need into a model folder.

    Arguments
    ---------
    model_folder : str
        The model folder whose embeddings were scored.
    calibration_json : str
        ``calibration.json`` written by the scoring CLI (``LogisticCalibration.save``).
    train_embeddings : str
        The training embeddings file the scores used (mean and cohort).
    scoring : str
        ``cosine`` (mean-subtracted cosine) or ``asnorm``.
    trial_list : str
        The list the calibration was fitted on.
    quality_measures : sequence of str
        Its quality measures (QMF); empty for plain logistic calibration.
    top_n : int
        Cohort scores kept (AS-norm, imposter mean).
    max_duration : float, optional
        Cap on durations (default: the scoring CLI's).

    Returns
    -------
    str
        The ``calibration.json`` written.
    """
    from sb_sphereface2.scoring.calibration import LogisticCalibration
    from sb_sphereface2.scoring.embeddings_io import read_embeddings
    from sb_sphereface2.scoring.quality import MAX_DURATION
    from sb_sphereface2.scoring.trial_scores import build_cohort

    if scoring not in SCORINGS:
        raise ValueError(f"store_calibration must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    calibration = LogisticCalibration.load(calibration_json)
    train = read_embeddings(train_embeddings)
    mean = train.embeddings.astype(np.float64).mean(axis=0)
    cohort = build_cohort(train.embeddings, train.speakers, mean)
    statistics = os.path.join(model_folder, STATISTICS_FILE)
    with atomic_write(statistics, "wb") as handle:
        np.savez(handle, mean=mean, cohort=np.asarray(cohort, dtype=np.float32))
    record = {
        "kind": "qmf" if quality_measures else "logistic",
        "scoring": scoring,
        "prior": calibration.prior,
        "calibration": calibration.to_dict(),
        "quality_measures": list(quality_measures),
        "top_n": int(top_n),
        "max_duration": float(MAX_DURATION if max_duration is None else max_duration),
        "trial_list": {"path": os.path.abspath(trial_list), "sha256": file_sha256(trial_list)},
        "embedding_model_sha256": file_sha256(os.path.join(model_folder, "embedding_model.ckpt")),
        "statistics_sha256": file_sha256(statistics),
        "description": calibration.describe(),
    }
    path = os.path.join(model_folder, CALIBRATION_FILE)
    write_json_atomic(path, record)
    return path


def load_calibration(model_folder):
    """The stored calibration of a model folder: ``(record, LogisticCalibration, mean, cohort)``,
    or None when the folder has none. A calibration of other weights, or statistics that are
    not the ones it was stored with, are one-line errors.

    Example
    -------
    >>> load_calibration(getfixture("tiny_model_folder")) is None
    True
    """
    from sb_sphereface2.scoring.calibration import LogisticCalibration

    path = os.path.join(model_folder, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        calibration = LogisticCalibration.from_dict(record["calibration"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a calibration file ({error})") from None
    checkpoint = os.path.join(model_folder, "embedding_model.ckpt")
    if record.get("embedding_model_sha256") != file_sha256(checkpoint):
        raise ValueError(f"{path} was fitted for other weights than {checkpoint}: rerun score.py --store_calibration")
    statistics = os.path.join(model_folder, STATISTICS_FILE)
    if not os.path.isfile(statistics) or file_sha256(statistics) != record.get("statistics_sha256"):
        raise ValueError(f"{statistics} is missing or is not the one {path} was stored with")
    with np.load(statistics, allow_pickle=False) as arrays:
        mean, cohort = arrays["mean"], arrays["cohort"]
    return record, calibration, mean, cohort


def pair_llr(stored, embeddings, durations):
    """Score and calibrated LLR of one pair with a stored calibration.

    Arguments
    ---------
    stored : tuple
        :func:`load_calibration`'s result.
    embeddings : numpy.ndarray
        The two embeddings [2, D] (enrolment, test).
    durations : sequence of float
        Their durations in seconds.

    Returns
    -------
    tuple
        ``(score, llr)``: the score the calibration takes (mean-subtracted cosine or
        AS-norm) and the LLR.
    """
    from sb_sphereface2.data.trials import TrialList
    from sb_sphereface2.scoring.quality import quality_features
    from sb_sphereface2.scoring.trial_scores import score_trial_list

    record, calibration, mean, cohort = stored
    measures = record["quality_measures"]
    trials = TrialList("pair", np.zeros(1, np.int8), ["a"], ["b"])
    # As the scoring CLI calls it for score.py (same top_n, same cohort).
    scored = score_trial_list(["a", "b"], np.asarray(embeddings, np.float32), trials, mean=mean, cohort=cohort,
                              top_n=record["top_n"], norm=None if record["scoring"] == "cosine" else record["scoring"],
                              imposter_top_n=record["top_n"] if "imposter_mean" in measures else None)
    features, _ = quality_features(measures, scored, np.asarray(durations, np.float64), record["max_duration"])
    return float(scored.scores[0]), float(calibration(scored.scores, features if measures else None)[0])
