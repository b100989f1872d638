"""Known answers for the statistics of the comparison harness: the paired t interval over
seeds and the speaker-level bootstrap (sb_sphereface2.scoring.comparison)."""

import itertools
import math

import numpy as np
import pytest

from sb_sphereface2.scoring.comparison import error_rates, paired_t_interval, resample_weights, speaker_bootstrap
from sb_sphereface2.scoring.metrics import compute_eer


def test_paired_t_interval_by_hand():
    # d = (-0.41, -0.84, -0.41): mean -0.55333, sd sqrt(0.123267 / 2) = 0.248261,
    # t(0.975, 2) = 4.302653, half width 4.302653 * 0.248261 / sqrt(3) = 0.616721.
    r = paired_t_interval([-0.41, -0.84, -0.41])
    assert r["mean"] == pytest.approx(-0.553333, abs=1e-6)
    assert r["sd"] == pytest.approx(0.248261, abs=1e-6)
    assert (r["low"], r["high"]) == (pytest.approx(-1.170054, abs=1e-5), pytest.approx(0.063387, abs=1e-5))
    assert (r["seeds"], r["favour_a"], r["favour_b"], r["ties"]) == (3, 3, 0, 0)
    # Six seeds, t(0.975, 5) = 2.570582: d = 1..6, mean 3.5, sd 1.870829, half 1.963314.
    r = paired_t_interval([1, 2, 3, 4, 5, 6])
    assert (r["low"], r["high"]) == (pytest.approx(1.536686, abs=1e-5), pytest.approx(5.463314, abs=1e-5))
    assert (r["favour_a"], r["favour_b"]) == (0, 6)
    one = paired_t_interval([0.0])
    assert math.isnan(one["low"]) and one["ties"] == 1
    with pytest.raises(ValueError, match="finite"):
        paired_t_interval([1.0, float("nan")])


# Three speakers, two target trials each and two non-target trials per pair of speakers.
SPEAKERS = ("a", "b", "c")
TRIALS = [(s, s, 1) for s in SPEAKERS for _ in range(2)] + \
         [(s, t, 0) for s, t in itertools.combinations(SPEAKERS, 2) for _ in range(2)]
ENROL = [e for e, _, _ in TRIALS]
TEST = [t for _, t, _ in TRIALS]
LABELS = np.array([label for _, _, label in TRIALS])
SCORES = np.array([0.9, 0.4, 0.8, 0.7, 0.35, 0.6,    # targets of a, b, c
                   0.5, 0.1, 0.2, 0.3, 0.45, 0.05])   # a-b, a-c, b-c


def test_resample_weights_count_the_trials_of_the_drawn_speakers():
    weights = resample_weights(ENROL, TEST, resamples=500, seed=3)
    counts = np.stack([weights[:, 2 * SPEAKERS.index(s)] for s in SPEAKERS], axis=1)  # a target trial: k
    assert (counts.sum(1) == 3).all()  # three speakers drawn each time
    for row, k in zip(weights, counts):
        expected = [k[SPEAKERS.index(e)] * (1 if e == t else k[SPEAKERS.index(t)]) for e, t in zip(ENROL, TEST)]
        assert row.tolist() == expected


def test_bootstrap_draws_match_the_exact_distribution_over_all_speaker_draws():
    """Over all 27 equally likely ordered draws of 3 speakers, the EER's exact mean; the
    mean of 20,000 bootstrap draws agrees with it (their standard error is < 0.1 points)."""
    exact = []
    for draw in itertools.product(range(3), repeat=3):
        k = np.bincount(draw, minlength=3)
        w = np.array([k[SPEAKERS.index(e)] * (1 if e == t else k[SPEAKERS.index(t)]) for e, t in zip(ENROL, TEST)])
        if (w * LABELS).sum() and (w * (1 - LABELS)).sum():
            exact.append(100 * compute_eer(SCORES, LABELS, weights=w)[0])
        else:
            exact.append(None)  # one speaker drawn three times: no non-target trial
    usable = [e for e in exact if e is not None]
    assert len(usable) == 24  # 3 draws of a single speaker have no non-target
    weights = resample_weights(ENROL, TEST, resamples=20000, seed=0)
    weights = weights[(weights * (1 - LABELS)).sum(1) > 0]
    draws = error_rates(SCORES, LABELS, weights)["eer_percent"]
    assert np.mean(draws) == pytest.approx(np.mean(usable), abs=0.3)
    assert np.std(draws) == pytest.approx(np.std(usable), rel=0.05)
    # speaker_bootstrap's interval is the percentile interval of exactly these draws.
    result = speaker_bootstrap(LABELS, ENROL, TEST, [SCORES], resamples=20000, seed=0)
    low, high = np.percentile(draws, [2.5, 97.5])
    assert (result["eer_percent"]["low"], result["eer_percent"]["high"]) == (pytest.approx(low), pytest.approx(high))
    assert result["eer_percent"]["value"] == pytest.approx(100 * compute_eer(SCORES, LABELS)[0])


def test_bootstrap_of_a_difference_pairs_the_draws():
    """Both systems see the same draws: a system against itself differs by exactly 0; a
    system better on every target trial of every speaker differs by a non-positive EER
    in every draw."""
    same = speaker_bootstrap(LABELS, ENROL, TEST, [SCORES, SCORES], resamples=1000)
    assert same["eer_percent"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    better = np.where(LABELS == 1, SCORES + 0.2, SCORES)
    diff = speaker_bootstrap(LABELS, ENROL, TEST, [better, SCORES], resamples=1000)
    assert diff["eer_percent"]["high"] <= 0 and diff["eer_percent"]["value"] < 0
    # A contrast of four systems: the degradation of "better" minus that of SCORES, with
    # the degraded systems equal to the clean ones, is exactly 0 in every draw.
    none = speaker_bootstrap(LABELS, ENROL, TEST, [better, better, SCORES, SCORES], contrast=(1, -1, -1, 1),
                             resamples=500)
    assert none["min_dcf_0.01"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="same trials"):
        speaker_bootstrap(LABELS, ENROL, TEST, [SCORES, SCORES[:-1]])
    with pytest.raises(ValueError, match="coefficient"):
        speaker_bootstrap(LABELS, ENROL, TEST, [SCORES, SCORES], contrast=(1,))
