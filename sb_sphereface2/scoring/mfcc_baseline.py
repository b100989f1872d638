"""A no-training reference for any trial list: MFCC mean/std cosine scoring.

Each utterance becomes the mean and the standard deviation over time of its 20 MFCCs
(SpeechBrain's ``MFCC``, no deltas), 40 numbers, standardised per dimension with the
mean and standard deviation over the training utterances; trials are scored by the cosine
of these vectors. It knows nothing about speakers, so a trained model that does not beat
it on the same trials has not learned speaker identity. (Without the standardisation the
large low-order coefficients dominate the cosine: on librispeech-mini's held-out 3.5 s
segments the EER is then about 22 % instead of about 8 %; see RESULTS.md.)

    python -m sb_sphereface2.scoring.mfcc_baseline --data_prep_folder results/<run>/data

prints the EER and minDCF of every trial list of a prepared folder (``trials/*.txt``,
utterances from ``test.csv``, the standardisation from ``train.csv``); ``--json FILE``
writes them too.
"""

import argparse
import glob
import os
import sys

import numpy as np
import torch

from sb_sphereface2.data.dataio import utterance_dataset
from sb_sphereface2.data.trials import read_trials
from sb_sphereface2.files import write_json_atomic
from sb_sphereface2.scoring.trial_scores import score_trial_list
from sb_sphereface2.scoring.metrics import evaluate
from sb_sphereface2.errors import fail

N_MFCC = 20


class MfccStatistics:
    """Mean and standard deviation over time of the MFCCs of a waveform.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the audio.
    n_mfcc : int
        Number of cepstral coefficients (the vector has 2 x n_mfcc numbers).

    Example
    -------
    >>> stats = MfccStatistics()
    >>> stats(torch.randn(16000)).shape
    torch.Size([40])
    """

    def __init__(self, sample_rate=16000, n_mfcc=N_MFCC):
        from speechbrain.lobes.features import MFCC

        self.mfcc = MFCC(n_mfcc=n_mfcc, deltas=False, context=False, sample_rate=sample_rate)

    @torch.no_grad()
    def __call__(self, waveform):
        feats = self.mfcc(waveform.reshape(1, -1).float())[0]
        return torch.cat([feats.mean(0), feats.std(0)])


def mfcc_embeddings(csv_path, ids=None, sample_rate=16000):
    """MFCC mean/std vectors of the utterances of a prepared CSV.

    Arguments
    ---------
    csv_path : str
        A CSV of :func:`sb_sphereface2.data.prepare.prepare_voxceleb` (segments read by
        their start/stop).
    ids : collection of str, optional
        Only these utterances (default: every row).
    sample_rate : int
        Sample rate of the audio.

    Returns
    -------
    ids : list of str
    embeddings : numpy.ndarray
        float64 [N, 40].

    Example
    -------
    >>> import tempfile, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> wav = os.path.join(folder, "a.wav")
    >>> soundfile.write(wav, np.random.randn(16000) * 0.1, 16000)
    >>> csv_path = os.path.join(folder, "test.csv")
    >>> _ = open(csv_path, "w").write(f"ID,duration,wav,start,stop,spk_id\\na/1/1,0.5,{wav},0,8000,a\\n"
    ...                                f"a/1/2,0.5,{wav},8000,16000,a\\n")
    >>> got_ids, emb = mfcc_embeddings(csv_path, ids={"a/1/2"})
    >>> got_ids, emb.shape
    (['a/1/2'], (1, 40))
    """
    dataset = utterance_dataset(csv_path, sample_rate)
    if ids is not None:
        wanted = set(ids)
        dataset = dataset.filtered_sorted(key_test={"id": lambda utt: utt in wanted})
    statistics = MfccStatistics(sample_rate)
    found, rows = [], []
    for item in dataset:
        found.append(item["id"])
        rows.append(statistics(item["sig"]).numpy().astype(np.float64))
    if ids is not None and len(found) != len(set(ids)):
        missing = sorted(set(ids) - set(found))
        raise ValueError(f"{csv_path}: no row for utterance {missing[0]!r} ({len(missing)} missing)")
    return found, np.stack(rows) if rows else np.zeros((0, 2 * N_MFCC))


def mfcc_baseline_scores(test_csv, trials, train_csv=None, sample_rate=16000):
    """Cosine scores of a trial list with MFCC mean/std vectors, each dimension
    standardised by the training utterances' mean and standard deviation (the trial
    utterances' without ``train_csv``).

    Arguments
    ---------
    test_csv : str
        CSV with every utterance the trials name.
    trials : TrialList
        The trials (:func:`sb_sphereface2.data.trials.read_trials`).
    train_csv : str, optional
        Training CSV whose mean vector is subtracted.
    sample_rate : int
        Sample rate of the audio.

    Returns
    -------
    numpy.ndarray
        Scores, float64 [N], in trial order.
    """
    ids, embeddings = mfcc_embeddings(test_csv, trials.utterances(), sample_rate)
    reference = mfcc_embeddings(train_csv, None, sample_rate)[1] if train_csv else embeddings
    standardised = (embeddings - reference.mean(0)) / np.maximum(reference.std(0), 1e-8)
    return score_trial_list(ids, standardised, trials).scores


def evaluate_prepared_folder(data_prep_folder, sample_rate=16000):
    """EER and minDCF of the MFCC baseline on every trial list of a prepared folder.

    Returns
    -------
    dict
        ``{list name: metrics of sb_sphereface2.scoring.trial_scores.evaluate}``.
    """
    paths = sorted(glob.glob(os.path.join(data_prep_folder, "trials", "*.txt")))
    test_csv = os.path.join(data_prep_folder, "test.csv")
    if not paths or not os.path.isfile(test_csv):
        raise FileNotFoundError(f"{data_prep_folder} has no test.csv or trials/*.txt (prepare held-out trials first)")
    train_csv = os.path.join(data_prep_folder, "train.csv")
    train_csv = train_csv if os.path.isfile(train_csv) else None
    results = {}
    for path in paths:
        trials = read_trials(path)
        scores = mfcc_baseline_scores(test_csv, trials, train_csv, sample_rate)
        results[trials.name] = evaluate(scores, trials.labels)
    return results


def main(argv=None):
    """Command line: print the baseline's EER and minDCF per trial list."""
    parser = argparse.ArgumentParser(prog="python -m sb_sphereface2.scoring.mfcc_baseline",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_prep_folder", required=True, help="a prepared folder (test.csv, trials/*.txt)")
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results = evaluate_prepared_folder(args.data_prep_folder, args.sample_rate)
    if args.json:
        write_json_atomic(args.json, {"baseline": "MFCC mean/std cosine", "data_prep_folder":
                                      os.path.abspath(args.data_prep_folder), "results": results})
    for name, metrics in results.items():
        print(f"MFCC mean/std cosine baseline, {name}: EER {metrics['eer_percent']:.2f} %, "
              f"minDCF(0.01) {metrics['min_dcf_0.01']:.3f} ({metrics['trials']} trials, "
              f"{metrics['targets']} targets)")
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(fail(error, 1))
