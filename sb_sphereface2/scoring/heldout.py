"""Evaluation lists of the held-out test speakers of a prepared folder, for measuring
learning: every trial, and the "hard" ones (same-sex non-targets only); a model folder's
cosine and AS-norm scores on them.

Data preparation (``test_speakers``) writes ``trials/heldout.txt``: balanced targets and
non-targets. For minDCF at p = 0.01 a list needs many more non-targets than targets, so
:func:`all_heldout_trials` keeps every target of ``heldout.txt`` (every pair of segments
from the two halves of a recording when ``test_trials`` allows them all) and adds every
pair of held-out items of different speakers. :func:`same_sex_trials` keeps the targets
and the non-targets between speakers of the same sex (LibriSpeech's ``SPEAKERS.TXT``
gives the sex), which cannot be told apart by pitch range alone.
"""

import csv
import os

import numpy as np

from sb_sphereface2.data.trials import TrialList, read_trials, speaker_of


def read_speaker_sexes(path):
    """``{speaker: "F" | "M"}`` from a LibriSpeech ``SPEAKERS.TXT`` (``ID | SEX | ...``).

    Example
    -------
    >>> import tempfile
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".TXT", delete=False)
    >>> _ = f.write(";ID  |SEX| SUBSET\\n19   | F | train-clean-100 | 25.19 | Kara\\n26 | M | x | 1 | y\\n")
    >>> f.close()
    >>> read_speaker_sexes(f.name)
    {'19': 'F', '26': 'M'}
    """
    sexes = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = [field.strip() for field in line.split("|")]
            if line.startswith(";") or len(fields) < 2 or fields[1] not in ("F", "M"):
                continue
            sexes[fields[0]] = fields[1]
    if not sexes:
        raise ValueError(f"{path}: no 'ID | F/M | ...' lines")
    return sexes


def all_heldout_trials(data_prep_folder):
    """Every target of ``trials/heldout.txt`` and every non-target pair of ``test.csv``'s
    held-out items (items named by other trial lists are left out).

    Returns
    -------
    TrialList
        Named "heldout_all"; targets first.
    """
    heldout = read_trials(os.path.join(data_prep_folder, "trials", "heldout.txt"))
    speakers = set(heldout.speakers())
    with open(os.path.join(data_prep_folder, "test.csv"), encoding="utf-8", newline="") as handle:
        ids = sorted(row["ID"] for row in csv.DictReader(handle) if speaker_of(row["ID"]) in speakers)
    owner = np.array([speaker_of(u) for u in ids])
    first, second = np.triu_indices(len(ids), k=1)
    different = owner[first] != owner[second]
    first, second = first[different], second[different]
    targets = [(e, t) for e, t, label in zip(heldout.enrol, heldout.test, heldout.labels) if label]
    enrol = [e for e, _ in targets] + [ids[i] for i in first]
    test = [t for _, t in targets] + [ids[i] for i in second]
    labels = np.concatenate([np.ones(len(targets), np.int8), np.zeros(len(first), np.int8)])
    return TrialList("heldout_all", labels, enrol, test)


def same_sex_trials(trials, sexes, name="heldout_hard"):
    """The targets and the non-targets between two speakers of the same sex.

    Example
    -------
    >>> t = TrialList("t", np.array([1, 0, 0], np.int8), ["a/1", "a/1", "a/1"], ["a/2", "b/1", "c/1"])
    >>> hard = same_sex_trials(t, {"a": "F", "b": "M", "c": "F"})
    >>> hard.labels.tolist(), hard.test
    ([1, 0], ['a/2', 'c/1'])
    """
    missing = sorted({s for s in trials.speakers() if s not in sexes})
    if missing:
        raise ValueError(f"no sex known for speaker {missing[0]!r} ({len(missing)} speakers)")
    keep = [label == 1 or sexes[speaker_of(e)] == sexes[speaker_of(t)]
            for e, t, label in zip(trials.enrol, trials.test, trials.labels)]
    keep = np.asarray(keep, dtype=bool)
    return TrialList(name, trials.labels[keep], [u for u, k in zip(trials.enrol, keep) if k],
                     [u for u, k in zip(trials.test, keep) if k])


def embed_csv(model_folder, csv_path):
    """``(ids, embeddings)`` of every row of a prepared CSV, embedded by the model folder
    with the extractor (:mod:`sb_sphereface2.scoring.extract`; ``exact``: one at a time for
    a model whose embeddings depend on padding, as score.py embeds)."""
    from sb_sphereface2.data.utterance_sources import csv_utterances
    from sb_sphereface2.scoring.extract import embedder_of_folder, extract

    embed, rate = embedder_of_folder(str(model_folder))
    result = extract(csv_utterances(str(csv_path), rate), embed, rate, exact=True, progress=False)
    if result.skipped:
        raise ValueError(f"{csv_path}: {len(result.skipped)} utterances not embedded, the first "
                         f"({result.skipped[0]['id']}) because {result.skipped[0]['reason']}")
    return result.ids, result.embeddings


def heldout_scores(model_folder, data_prep_folder, trial_lists, top_n=300):
    """Scores of a model folder on trial lists of held-out items, as the recipe scores
    them: cosine after subtracting the mean training embedding, and AS-norm against a
    cohort of per-speaker mean training embeddings (the paper's).

    Arguments
    ---------
    model_folder : str
        A recipe model folder (or an exported one).
    data_prep_folder : str
        Its prepared data (test.csv with the trials' items, train.csv for the mean and
        the cohort).
    trial_lists : list of TrialList
        E.g. ``[all_heldout_trials(prep), same_sex_trials(...)]``.
    top_n : int
        Cohort scores kept per side for AS-norm.

    Returns
    -------
    dict
        ``{list name: {"cosine": scores, "asnorm": scores}}``, float64 arrays in trial order.
    """
    from sb_sphereface2.scoring.trial_scores import build_cohort, score_trial_list

    ids, embeddings = embed_csv(model_folder, os.path.join(data_prep_folder, "test.csv"))
    train_ids, training = embed_csv(model_folder, os.path.join(data_prep_folder, "train.csv"))
    mean = training.astype(np.float64).mean(0)
    cohort = build_cohort(training, [speaker_of(u) for u in train_ids], mean=mean)
    scores = {}
    for trials in trial_lists:
        scores[trials.name] = {
            "cosine": score_trial_list(ids, embeddings, trials, mean=mean).scores,
            "asnorm": score_trial_list(ids, embeddings, trials, mean=mean, cohort=cohort,
                                       top_n=min(top_n, len(cohort)), norm="asnorm").scores,
        }
    return scores


def evaluate_model_folder(model_folder, data_prep_folder, trial_lists):
    """EER and minDCF of a model folder's cosine scores on trial lists of held-out items
    (``heldout_scores``).

    Returns
    -------
    dict
        ``{list name: metrics of sb_sphereface2.scoring.metrics.evaluate}``.
    """
    from sb_sphereface2.scoring.metrics import evaluate

    scores = heldout_scores(model_folder, data_prep_folder, trial_lists)
    return {trials.name: evaluate(scores[trials.name]["cosine"], trials.labels) for trials in trial_lists}
