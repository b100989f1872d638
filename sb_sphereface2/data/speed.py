"""Speed perturbation as the paper and wespeaker define an epoch, and its reproducible draws.

Each training utterance is read once per epoch at a speed drawn from ``SPEEDS``
(0.9, 1.0, 1.1); an utterance played at another speed counts as another speaker, so the
label is speed-specific (``<spk>@sp0.9``) and the head has 3 x speakers classes
(VoxCeleb2: 5,994 speakers -> 17,982 classes, as in the SphereFace2 speaker paper and
wespeaker's VoxCeleb recipes). Without speed perturbation the speeds are ``(1.0,)``.

Draws are per item: :func:`item_rng` seeds a generator from (seed, epoch, utterance ID),
so an utterance's speed and crop depend on nothing else (not on the DataLoader worker,
the process, the batch or the order), are reproducible, and change from epoch to epoch.
"""

import hashlib

import numpy as np

SPEEDS = (0.9, 1.0, 1.1)


def training_speeds(speed_perturb):
    """The speeds an epoch draws from: ``SPEEDS`` with speed perturbation, else 1.0 only.

    Example
    -------
    >>> training_speeds(True), training_speeds(False)
    ((0.9, 1.0, 1.1), (1.0,))
    """
    return SPEEDS if speed_perturb else (1.0,)


def speed_label(speaker, speed):
    """The class of ``speaker`` heard at ``speed``: the speaker itself at 1.0, else
    ``<speaker>@sp<speed>``.

    Example
    -------
    >>> speed_label("id10001", 1.0), speed_label("id10001", 0.9), speed_label("id10001", 1.1)
    ('id10001', 'id10001@sp0.9', 'id10001@sp1.1')
    """
    return speaker if speed == 1.0 else f"{speaker}@sp{speed:g}"


def speed_labels(speakers, speeds=SPEEDS):
    """Every class of ``speakers`` x ``speeds``, sorted (the label encoder's order).

    Example
    -------
    >>> speed_labels(["b", "a"])
    ['a', 'a@sp0.9', 'a@sp1.1', 'b', 'b@sp0.9', 'b@sp1.1']
    """
    return sorted(speed_label(spk, speed) for spk in set(speakers) for speed in speeds)


def _key_number(key):
    return int.from_bytes(hashlib.blake2b(str(key).encode("utf-8"), digest_size=8).digest(), "little")


def item_rng(seed, epoch, key):
    """A numpy generator for the random choices of item ``key`` in ``epoch``.

    Arguments
    ---------
    seed : int
        The run's seed.
    epoch : int
        The epoch (SpeechBrain counts from 1).
    key : str
        The utterance ID.

    Returns
    -------
    numpy.random.Generator

    Example
    -------
    >>> a, b = item_rng(1986, 1, "id1/s/1"), item_rng(1986, 1, "id1/s/1")
    >>> int(a.integers(1 << 30)) == int(b.integers(1 << 30))
    True
    >>> int(item_rng(1986, 1, "x").integers(1 << 30)) == int(item_rng(1986, 2, "x").integers(1 << 30))
    False
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), _key_number(key)])


def draw_speed(rng, speeds=SPEEDS):
    """One of ``speeds``, uniformly.

    Example
    -------
    >>> draw_speed(np.random.default_rng(0), (1.0,))
    1.0
    """
    return float(speeds[int(rng.integers(len(speeds)))]) if len(speeds) > 1 else float(speeds[0])


def current_epoch(epoch_source):
    """The epoch an ``epoch_source`` is at: SpeechBrain's ``EpochCounter`` (``.current``,
    1 during the first epoch), any object with ``current``, or None (0).

    Example
    -------
    >>> from types import SimpleNamespace
    >>> current_epoch(SimpleNamespace(current=3)), current_epoch(None)
    (3, 0)
    """
    return 0 if epoch_source is None else int(epoch_source.current)
