"""The training speakers and the label encoder over their (speed-specific) classes.

- :func:`read_speakers`: the distinct ``spk_id`` of a training CSV.
- :func:`label_encoder`: SpeechBrain's ``CategoricalEncoder.load_or_create`` over the
  classes (e.g. :func:`sb_sphereface2.data.speed.speed_labels`), saved atomically; a
  stored encoder whose classes differ is rebuilt (the main process writes it, DDP
  processes wait at a barrier and read it).
- :func:`check_classes`: a pretrained model's encoder must know every class the data
  can produce (fine-tuning keeps the head's classes).
"""

import csv
import os

from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from sb_sphereface2.files import temporary_path


def read_speakers(csv_path):
    """Sorted distinct ``spk_id`` values of a training CSV.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write("ID,spk_id\\na/1,b\\nb/1,a\\nb/2,b\\n")
    >>> read_speakers(path)
    ['a', 'b']
    """
    with open(csv_path, encoding="utf-8", newline="") as handle:
        return sorted({row["spk_id"] for row in csv.DictReader(handle)})


class AtomicCategoricalEncoder(CategoricalEncoder):
    """SpeechBrain's ``CategoricalEncoder`` whose ``save`` never leaves a half-written file
    (same file format; SpeechBrain's own class reads it)."""

    def save(self, path):
        """Save to a temporary file beside ``path``, then rename it over ``path``."""
        tmp = temporary_path(path)
        try:
            super().save(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def label_encoder(labels, path):
    """A label encoder over ``labels`` (in that order), stored at ``path``.

    ``CategoricalEncoder.load_or_create``: the main process loads ``path`` or creates it,
    every DDP process then reads it. When the stored classes are not ``labels`` (the
    training data changed), the file is rebuilt.

    Arguments
    ---------
    labels : sequence of str
        The classes, e.g. ``speed_labels(read_speakers(train_csv), speeds)``.
    path : str
        Encoder file, e.g. ``<data_prep_folder>/label_encoder.txt``.

    Returns
    -------
    speechbrain.dataio.encoder.CategoricalEncoder

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "label_encoder.txt")
    >>> encoder = label_encoder(["spk1", "spk1@sp0.9", "spk2"], path)
    >>> len(encoder), encoder.encode_label("spk1@sp0.9"), encoder.encode_label("spk2")
    (3, 1, 2)
    """
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: the class list has duplicates")
    encoder = AtomicCategoricalEncoder()
    encoder.load_or_create(path, from_iterables=[labels])
    if [encoder.ind2lab[i] for i in range(len(encoder))] != labels:
        if if_main_process():
            fresh = AtomicCategoricalEncoder()
            fresh.update_from_iterable(labels)
            fresh.save(path)
        ddp_barrier()
        encoder = AtomicCategoricalEncoder()
        encoder.load(path)
    encoder.expect_len(len(labels))
    return encoder


def check_classes(encoder, labels, where):
    """Raise a one-line error when ``encoder`` lacks one of ``labels``.

    Example
    -------
    >>> encoder = CategoricalEncoder()
    >>> encoder.update_from_iterable(["a", "a@sp0.9"])
    >>> check_classes(encoder, ["a"], "model")
    >>> check_classes(encoder, ["a", "b"], "model")
    Traceback (most recent call last):
    ...
    ValueError: 1 training classes are not classes of model (first: b); fine-tune on the speakers (and speeds) it was trained on
    """
    unknown = sorted(set(labels) - set(encoder.lab2ind))
    if unknown:
        raise ValueError(
            f"{len(unknown)} training classes are not classes of {where} (first: {unknown[0]}); "
            "fine-tune on the speakers (and speeds) it was trained on"
        )
