"""Score normalisation and trial scoring against per-trial loops written here."""

import numpy as np
import pytest

from sb_sphereface2.scoring.normalization import cohort_statistics, l2_normalize, speaker_mean_cohort
from sb_sphereface2.scoring.trial_scores import build_cohort, score_trial_list
from sb_sphereface2.data.trials import TrialList, read_trials


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    dim = 16
    ids = [f"spk{i % 8}/v/{i:03d}" for i in range(40)]
    embeddings = rng.normal(size=(40, dim)) + 0.5
    cohort_raw = rng.normal(size=(50, dim)) + 0.5
    mean = rng.normal(size=dim) * 0.3 + 0.5
    n = 200
    enrol = rng.integers(0, 40, n)
    test = rng.integers(0, 40, n)
    labels = np.array([ids[e][:4] == ids[t][:4] for e, t in zip(enrol, test)], dtype=np.int8)
    trials = TrialList("toy", labels, [ids[i] for i in enrol], [ids[i] for i in test])
    return ids, embeddings, cohort_raw, mean, trials


def loop_reference(ids, embeddings, cohort_raw, mean, trials, method, top_n):
    """Straightforward per-trial computation: cosine after mean subtraction, statistics
    of each side recomputed for every trial."""
    row = {u: i for i, u in enumerate(ids)}
    cohort = unit(cohort_raw - mean)
    out = []
    for e_id, t_id in zip(trials.enrol, trials.test):
        e = unit(embeddings[row[e_id]] - mean)
        t = unit(embeddings[row[t_id]] - mean)
        score = float(e @ t)
        stats = []
        for side in (e, t):
            cohort_scores = np.sort(cohort @ side)[::-1]
            if top_n is not None:
                cohort_scores = cohort_scores[:top_n]
            stats.append((cohort_scores.mean(), cohort_scores.std(ddof=1)))
        (mu_e, sd_e), (mu_t, sd_t) = stats
        if method is None:
            out.append(score)
        elif method == "znorm":
            out.append((score - mu_e) / sd_e)
        elif method == "tnorm":
            out.append((score - mu_t) / sd_t)
        else:
            out.append(0.5 * ((score - mu_e) / sd_e + (score - mu_t) / sd_t))
    return np.array(out)


@pytest.mark.parametrize("method", [None, "znorm", "tnorm", "snorm", "asnorm"])
def test_normalised_scores_equal_per_trial_loop(toy, method):
    ids, embeddings, cohort_raw, mean, trials = toy
    cohort = build_cohort(cohort_raw, mean=mean, kind="utterance")
    top_n = 10 if method == "asnorm" else None
    ours = score_trial_list(ids, embeddings, trials, mean=mean, cohort=cohort, top_n=10, norm=method,
                        chunk_size=37, cohort_chunk_size=7).scores
    expected = loop_reference(ids, embeddings, cohort_raw, mean, trials, method, top_n)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", [None, "asnorm", "snorm"])
def test_imposter_means_and_magnitudes_equal_per_trial_loop(toy, norm):
    """The per-side quality measures: mean of the top-N cohort scores (whatever the score
    normalisation) and the length of the mean-subtracted embedding."""
    ids, embeddings, cohort_raw, mean, trials = toy
    cohort = build_cohort(cohort_raw, mean=mean, kind="utterance")
    scored = score_trial_list(ids, embeddings, trials, mean, cohort, top_n=10, norm=norm, imposter_top_n=7,
                              cohort_chunk_size=5)
    row = {u: i for i, u in enumerate(ids)}
    unit_cohort = unit(cohort_raw - mean)
    for side in ("enrol", "test"):
        centred = np.array([embeddings[row[u]] - mean for u in getattr(trials, side)])
        top = np.sort(unit(centred) @ unit_cohort.T, axis=1)[:, -7:]
        np.testing.assert_allclose(getattr(scored, f"{side}_imposter_mean"), top.mean(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(getattr(scored, f"{side}_magnitude"), np.linalg.norm(centred, axis=1), rtol=1e-5)
        np.testing.assert_array_equal(getattr(scored, f"{side}_rows"), [row[u] for u in getattr(trials, side)])
    expected = loop_reference(ids, embeddings, cohort_raw, mean, trials, norm, 10 if norm == "asnorm" else None)
    np.testing.assert_allclose(scored.scores, expected, rtol=1e-4, atol=1e-5)


def test_chunk_sizes_do_not_change_scores(toy):
    ids, embeddings, cohort_raw, mean, trials = toy
    cohort = build_cohort(cohort_raw, mean=mean, kind="utterance")
    index = {u: i for i, u in enumerate(ids)}
    small = score_trial_list(index, embeddings, trials, mean, cohort, top_n=5, norm="asnorm",
                         chunk_size=1, cohort_chunk_size=1).scores
    large = score_trial_list(index, embeddings, trials, mean, cohort, top_n=5, norm="asnorm").scores
    # Cosines and cohort statistics are float32 matmuls: chunking changes the summation
    # order, i.e. a few float32 ulps per cosine (~1e-7), which AS-norm divides by cohort
    # standard deviations of ~0.1 and sums over two sides: ~1e-5 relative at most.
    np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-5)


def test_top_n_larger_than_cohort_is_whole_cohort(toy):
    ids, embeddings, cohort_raw, mean, trials = toy
    cohort = build_cohort(cohort_raw, mean=mean, kind="utterance")
    whole = score_trial_list(ids, embeddings, trials, mean, cohort, norm="snorm").scores
    capped = score_trial_list(ids, embeddings, trials, mean, cohort, top_n=10_000, norm="asnorm").scores
    np.testing.assert_allclose(whole, capped, rtol=1e-6, atol=1e-6)


def test_cohort_statistics_top_n_equals_sorted_slice():
    rng = np.random.default_rng(1)
    emb = unit(rng.normal(size=(30, 8)))
    cohort = unit(rng.normal(size=(25, 8)))
    stats = cohort_statistics(emb, cohort, top_n=6, chunk_size=4)
    top = np.sort(emb @ cohort.T, axis=1)[:, -6:]
    np.testing.assert_allclose(stats.mean, top.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, top.std(axis=1, ddof=1), rtol=1e-4, atol=1e-6)


def test_speaker_mean_cohort_equals_loop():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(30, 6))
    speakers = [f"s{i}" for i in rng.integers(0, 5, 30)]
    mean = emb.mean(axis=0)
    cohort, names = speaker_mean_cohort(emb, speakers, mean)
    for name, row in zip(names, cohort):
        members = unit(np.array([e - mean for e, s in zip(emb, speakers) if s == name]))
        np.testing.assert_allclose(row, unit(members.mean(axis=0)), rtol=1e-5, atol=1e-6)
    assert names == sorted(set(speakers))


def test_l2_normalize_subtracts_mean():
    x = l2_normalize(np.array([[2.0, 3.0]]), mean=np.array([1.0, 3.0])).numpy()
    np.testing.assert_allclose(x, [[1.0, 0.0]])


def test_unknown_id_error_names_file_line(tmp_path, toy):
    ids, embeddings, *_ = toy
    path = tmp_path / "list.txt"
    path.write_text(
        "# comment\n"
        f"1 {ids[0]}.wav {ids[8]}.wav\n"
        "\n"
        f"0 {ids[0]}.wav {ids[1]}.wav\n"
        f"0 {ids[0]}.wav nobody/x/1.wav\n"
        f"0 ghost/x/2.wav {ids[1]}.wav\n"
    )
    trials = read_trials(path)
    assert trials.line_numbers.tolist() == [2, 4, 5, 6]
    with pytest.raises(ValueError, match=r"'list', line 5: test utterance 'nobody/x/1' has no "
                       r"embedding \(2 of 4 trials"):
        score_trial_list(ids, embeddings, trials).scores


def test_bad_arguments():
    trials = TrialList("t", np.array([1], dtype=np.int8), ["a"], ["b"])
    emb = np.eye(2)
    with pytest.raises(ValueError, match="needs a cohort"):
        score_trial_list(["a", "b"], emb, trials, norm="asnorm").scores
    with pytest.raises(ValueError, match="unknown score normalisation"):
        score_trial_list(["a", "b"], emb, trials, norm="xnorm", cohort=emb).scores
    with pytest.raises(ValueError, match="speaker"):
        build_cohort(emb, kind="speaker-mean")
    with pytest.raises(ValueError, match="duplicate utterance ID 'a'"):
        score_trial_list(["a", "a"], emb, trials).scores
