"""Quality measures of a trial, for quality-aware calibration (quality-measure functions, QMF).

QMF (Thienpondt, Desplanques & Demuynck, "The IDLab VoxSRC-20 submission", arXiv
2010.11255) calibrates ``llr = w_0·score + Σ w_k·q_k + b`` by logistic regression, where
the ``q_k`` describe how reliable the two utterances of the trial are, so the decision
threshold follows the trial's conditions. wespeaker's VoxCeleb recipe
(``examples/voxceleb/v2/local/score_calibration.sh``, ``wespeaker/bin/score_norm.py`` and
``wespeaker/bin/score_calibration.py``) does it on AS-normalised scores with three measures
per side: the duration in seconds capped at 20 s, the length of the mean-subtracted
embedding, and the mean of the top-N cohort scores (the AS-norm statistic μ, "imposter
mean"); it trains on a calibration list drawn from the training speakers (VoxCeleb2-dev,
short 2–6 s and long > 6 s utterances paired short–short, short–long and long–long,
half targets) by minimising Cllr with L-BFGS.

Here, each measure ``m`` of the two sides gives two trial features that do not depend on
which side is the enrolment: ``min_m`` and ``max_m``. (wespeaker also feeds ``max − min``,
a linear combination of these two, which adds nothing to a linear model, and the ratio
``max / min``, which is unstable for cohort means near zero.)
"""

import numpy as np

__all__ = ["QUALITY_MEASURES", "MAX_DURATION", "quality_features"]

QUALITY_MEASURES = ("duration", "imposter_mean", "magnitude")

# wespeaker caps durations at 20 s before using them as a quality measure (--max_dur 20).
MAX_DURATION = 20.0


def quality_features(measures, scored, durations=None, max_duration=MAX_DURATION):
    """Quality features of every trial of a scored list.

    Arguments
    ---------
    measures : sequence of str
        Names from :data:`QUALITY_MEASURES`: ``duration`` (seconds, capped at
        ``max_duration``), ``imposter_mean`` (mean of the side's top-N cohort scores) and
        ``magnitude`` (length of the side's mean-subtracted embedding).
    scored : sb_sphereface2.scoring.trial_scores.ScoredTrials
        The scored list (scored with ``imposter_top_n`` for ``imposter_mean``).
    durations : numpy.ndarray, optional
        Duration in seconds of every embedding row [U] (for ``duration``).
    max_duration : float
        Cap on durations.

    Returns
    -------
    features : numpy.ndarray
        float64 [N, 2·len(measures)]: ``min`` then ``max`` of each measure over the two sides.
    names : list of str
        ``min_<measure>``, ``max_<measure>``, in column order.

    Example
    -------
    >>> from sb_sphereface2.scoring.trial_scores import ScoredTrials
    >>> scored = ScoredTrials(np.zeros(2), np.array([0, 1]), np.array([2, 2]),
    ...                       np.ones(2), np.ones(2), np.array([0.3, 0.5]), np.array([0.4, 0.4]))
    >>> features, names = quality_features(["duration", "imposter_mean"], scored,
    ...                                    durations=np.array([3.0, 30.0, 8.0]))
    >>> names
    ['min_duration', 'max_duration', 'min_imposter_mean', 'max_imposter_mean']
    >>> features.tolist()
    [[3.0, 8.0, 0.3, 0.4], [8.0, 20.0, 0.4, 0.5]]
    """
    columns, names = [], []
    for measure in measures:
        if measure == "duration":
            if durations is None:
                raise ValueError("the duration quality measure needs the duration of every utterance")
            capped = np.minimum(np.asarray(durations, dtype=np.float64), max_duration)
            enrol, test = capped[scored.enrol_rows], capped[scored.test_rows]
        elif measure == "imposter_mean":
            if scored.enrol_imposter_mean is None:
                raise ValueError("the imposter_mean quality measure needs a cohort (training embeddings)")
            enrol, test = scored.enrol_imposter_mean, scored.test_imposter_mean
        elif measure == "magnitude":
            enrol, test = scored.enrol_magnitude, scored.test_magnitude
        else:
            raise ValueError(f"unknown quality measure {measure!r}; choose from {QUALITY_MEASURES}")
        columns += [np.minimum(enrol, test), np.maximum(enrol, test)]
        names += [f"min_{measure}", f"max_{measure}"]
    if not columns:
        return np.empty((len(scored.scores), 0)), names
    return np.stack(columns, axis=1).astype(np.float64), names
