"""Checks of a trial list made before anything is embedded or scored.

- A list without target or without non-target trials has no EER: an error naming the list.
- The same pair of utterances labelled both target and non-target: an error naming both lines.
- Duplicate trials (the same pair again, in either order: cosine scores are symmetric) and
  self-trials (an utterance against itself, a score of 1) are kept but counted, so that
  the counts can be warned about and written beside the results.
"""

import os
from dataclasses import dataclass

import numpy as np

from sb_sphereface2.files import file_sha256

__all__ = ["TrialListCheck", "check_trial_list"]


@dataclass
class TrialListCheck:
    """What :func:`check_trial_list` found.

    Arguments
    ---------
    name : str
        The list's name.
    path : str or None
        Its file (absolute), if it was read from one.
    sha256 : str or None
        The file's sha256.
    trials, targets, nontargets, duplicates, self_trials : int
        Counts (``duplicates``: trials whose pair appeared on an earlier line).
    """

    name: str
    path: str
    sha256: str
    trials: int
    targets: int
    nontargets: int
    duplicates: int
    self_trials: int

    def warnings(self):
        """Sentences about duplicates and self-trials (empty when there are none).

        Example
        -------
        >>> TrialListCheck("toy", None, None, 10, 5, 5, 2, 1).warnings()
        ["trial list 'toy': 2 duplicate trials (the same pair of utterances again, kept)", "trial list 'toy': 1 self-trial (an utterance against itself, kept)"]
        """
        found = []
        if self.duplicates:
            plural = "s" if self.duplicates > 1 else ""
            found.append(f"trial list {self.name!r}: {self.duplicates:,} duplicate trial{plural} "
                         "(the same pair of utterances again, kept)")
        if self.self_trials:
            plural = "s" if self.self_trials > 1 else ""
            found.append(f"trial list {self.name!r}: {self.self_trials:,} self-trial{plural} "
                         "(an utterance against itself, kept)")
        return found

    def provenance(self):
        """The per-list fields written into ``results.json``."""
        return {"trial_list": self.path, "trial_list_sha256": self.sha256,
                "duplicate_trials": self.duplicates, "self_trials": self.self_trials}


def check_trial_list(trials, path=None):
    """Check a trial list (see the module docstring) and count its oddities.

    Arguments
    ---------
    trials : sb_sphereface2.data.trials.TrialList
        The list.
    path : str, optional
        The file it was read from (its sha256 is recorded).

    Returns
    -------
    TrialListCheck

    Raises
    ------
    ValueError
        No targets or no non-targets; a pair labelled both ways.

    Example
    -------
    >>> from sb_sphereface2.data.trials import TrialList
    >>> t = TrialList("toy", np.array([1, 0, 1, 0], dtype=np.int8),
    ...               ["a/1", "a/1", "a/2", "b/1"], ["a/2", "b/1", "a/1", "b/1"])
    >>> c = check_trial_list(t)
    >>> c.targets, c.duplicates, c.self_trials
    (2, 1, 1)
    >>> check_trial_list(TrialList("all", np.array([1, 1], dtype=np.int8), ["a", "a"], ["b", "c"]))
    Traceback (most recent call last):
    ...
    ValueError: trial list 'all': 2 target and 0 non-target trials; a verification list needs both
    """
    labels = np.asarray(trials.labels)
    n_target = int((labels == 1).sum())
    n_nontarget = int(labels.size - n_target)
    where = f"trial list {trials.name!r}" + (f" ({path})" if path else "")
    if n_target == 0 or n_nontarget == 0:
        raise ValueError(f"{where}: {n_target} target and {n_nontarget} non-target trials; "
                         "a verification list needs both")
    names, codes = np.unique(np.r_[np.asarray(trials.enrol, dtype=str), np.asarray(trials.test, dtype=str)],
                             return_inverse=True)
    codes = codes.ravel().astype(np.int64)
    enrol, test = codes[: len(labels)], codes[len(labels):]
    pair = np.minimum(enrol, test) * len(names) + np.maximum(enrol, test)
    _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    first_of_each = first[inverse]
    conflict = labels != labels[first_of_each]
    if conflict.any():
        index = int(np.argmax(conflict))
        raise ValueError(
            f"{where}, lines {trials.line_of(first_of_each[index])} and {trials.line_of(index)}: "
            f"the pair {trials.enrol[index]!r} / {trials.test[index]!r} is labelled both target "
            f"and non-target ({int(conflict.sum())} such trials)"
        )
    return TrialListCheck(
        name=trials.name,
        path=None if path is None else os.path.abspath(os.fspath(path)),
        sha256=None if path is None else file_sha256(path),
        trials=int(labels.size),
        targets=n_target,
        nontargets=n_nontarget,
        duplicates=int(labels.size - len(first)),
        self_trials=int((enrol == test).sum()),
    )
