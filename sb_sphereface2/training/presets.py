"""Small-data preset: command-line overrides of ``hparams/train.yaml`` chosen from a corpus's size.

The defaults of ``hparams/train.yaml`` are the paper's VoxCeleb2 recipe (5,994 speakers,
about 2,300 hours, a 6.6 M-parameter ResNet34 trained for 150 epochs with SGD on GPUs).
On a few hundred speakers and an hour of speech on a CPU that recipe does not learn:
its 150 epochs take hours, its margin ramp (epochs 20-40) starts after a short run has
ended, and SGD at lr 0.1 with a margin collapses a small model's embeddings (cosines of
0.99 for every pair). This module chooses, from the number of speakers and minutes of
audio, a documented set of overrides that learns in minutes on two CPU cores:

- a small ResNet (``small_channels``, one basic block per stage, 40 mel bins, 128-d
  embedding), about 0.24 M parameters;
- Adam with a 1-epoch warm-up from zero and an exponential decay to 1/15 of its peak;
- enough epochs for about ``TARGET_ITERATIONS`` optimiser steps (each epoch reads every
  training item once: a 3 s segment of a cut recording or a whole file);
- the margin ramped over a fraction of the run (``MARGIN_RAMP``: from 20 % to 40 % of the
  iterations, the paper's 20-40 of 150 epochs moved earlier), to the small-data margin
  ``SMALL_DATA_MARGINS`` of the loss (benchmarks/bench_learning.py measures it);
- speed perturbation (three times the classes), no MUSAN/RIR augmentation (not shipped);
- held-out test speakers (a quarter of them, at most 60, for ``trials/heldout.txt``)
  when no trial list is given, and 20 validation speakers when at least 100 remain for
  training; otherwise validation is off, and the preset says so.

Corpora of at least ``LARGE_SPEAKERS`` speakers and ``LARGE_HOURS`` hours get no
preset: the paper's recipe is made for them.

    python -m sb_sphereface2.training.presets data/librispeech-mini [--stage finetune]

prints the choice and its reasons (``--stage finetune``: the overrides of
``hparams/finetune.yaml``, large-margin fine-tuning of a stage-1 model, see
:func:`small_data_finetune_preset`); ``--args`` prints only the overrides, one per line,
for ``recipes/VoxCeleb/train.py``; ``--save FILE`` writes them to a file
(``recipes/VoxCeleb/demo.sh`` does this).
"""

import argparse
import math
import sys
from dataclasses import dataclass, field

import soundfile

from sb_sphereface2.data.audio_check import find_audio_files
from sb_sphereface2.data.split import MIN_DEV_SPEAKERS
from sb_sphereface2.data.trials import speaker_of
from sb_sphereface2.files import write_text_atomic
from sb_sphereface2.errors import fail

LARGE_SPEAKERS = 1000
LARGE_HOURS = 100.0
TARGET_ITERATIONS = 720
MIN_EPOCHS, MAX_EPOCHS = 10, 80
CROP_SECONDS = 1.015  # 100 frames: (100 - 1) x 10 ms + 25 ms
BATCH_SIZE = 32
SEGMENT_SECONDS = 3.0
MIN_TRAINING_SPEAKERS_WITH_VALIDATION = 100
MAX_TEST_SPEAKERS = 60
MARGIN_RAMP = (0.2, 0.4)  # fractions of the run: ramp start, final margin reached
SMALL_DATA_MARGINS = {"sphereface2_c": 0.1, "sphereface2_a": 0.1, "sphereface2_m": 1.2, "aam": 0.1}
SMALL_MODEL = {
    "n_mels": 40,
    "resnet_channels": "[16,32,64,64]",
    "resnet_blocks": "[1,1,1,1]",
    "emb_dim": 128,
}
# Stage 2 (hparams/finetune.yaml, large-margin fine-tuning) on a small corpus: crops
# longer than stage 1's but within the shortest segment (300 frames would need 3.015 s),
# the stage file's epochs, lr and fixed lmf_margin, with stage 1's optimiser and batch.
FINETUNE_CROP_SECONDS = 2.995  # 298 frames: (298 - 1) x 10 ms + 25 ms, inside a 3 s segment
FINETUNE_KEPT = ("lr", "final_lr", "warmup_epochs", "warm_from_zero", "number_of_epochs", "margin",
                 "margin_start_epoch", "margin_fix_epoch", "average_last", "crop_seconds")
SMALL_OPTIMISER = {
    "opt_class": "!name:torch.optim.Adam",
    "lr": 0.006,          # x batch 32 / 64 (the lr scale of hparams/train.yaml): a peak of 3e-3
    "final_lr": 0.0004,
    "warmup_epochs": 2,
    "warm_from_zero": True,
}


@dataclass
class CorpusSize:
    """How big a corpus is, from its file headers.

    Arguments
    ---------
    speakers : int
        Speaker folders with audio.
    files : int
        Audio files.
    minutes : float
        Total audio.
    items : int
        Training items it makes: each recording of a one-recording speaker cut into
        ``SEGMENT_SECONDS`` segments (as data preparation does), other files whole.
    """

    speakers: int
    files: int
    minutes: float
    items: int


@dataclass
class Preset:
    """A choice of overrides and the reasons for it.

    Arguments
    ---------
    name : str
        "small-data" or "none" (the paper's recipe).
    overrides : dict
        ``{key: value}`` for ``recipes/VoxCeleb/train.py`` (``--key=value``).
    notes : list of str
        One line per decision, printed at the start of a run.
    """

    name: str
    overrides: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def arguments(self):
        """The overrides as command-line arguments.

        Example
        -------
        >>> Preset("small-data", {"lr": 0.006, "augment": False}).arguments()
        ['--lr=0.006', '--augment=False']
        """
        return [f"--{key}={value}" for key, value in self.overrides.items()]


def measure_corpus(data_folder):
    """Speakers, files, minutes and training items of a corpus folder (file headers only).

    Arguments
    ---------
    data_folder : str
        A folder of ``<speaker>/<recording>`` or ``<speaker>/<session>/<utterance>`` audio.

    Returns
    -------
    CorpusSize

    Example
    -------
    >>> import os, tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> for spk in "ab":
    ...     os.makedirs(os.path.join(root, spk))
    ...     soundfile.write(os.path.join(root, spk, "rec.wav"), np.zeros(16000 * 12), 16000)
    >>> measure_corpus(root)
    CorpusSize(speakers=2, files=2, minutes=0.4, items=8)
    """
    files = find_audio_files(data_folder)
    per_speaker = {}
    for f in files:
        per_speaker.setdefault(speaker_of(f.utt_id), []).append(f)
    seconds, items = 0.0, 0
    for group in per_speaker.values():
        for f in group:
            duration = soundfile.info(f.path).duration
            seconds += duration
            segments = int(duration // SEGMENT_SECONDS)
            items += segments if len(group) == 1 and segments >= 2 else 1
    return CorpusSize(len(per_speaker), len(files), round(seconds / 60.0, 2), items)


def small_data_preset(size, loss="sphereface2_c", trial_list=False):
    """The overrides for a corpus of ``size`` (see the module docstring).

    Arguments
    ---------
    size : CorpusSize
        From :func:`measure_corpus`.
    loss : str
        The loss block (its small-data margin is chosen).
    trial_list : bool
        The user gives a trial list: no held-out test speakers are drawn.

    Returns
    -------
    Preset

    Example
    -------
    >>> preset = small_data_preset(CorpusSize(speakers=251, files=251, minutes=52.35, items=926))
    >>> {k: preset.overrides[k] for k in ("test_speakers", "dev_speakers", "number_of_epochs", "margin")}
    {'test_speakers': 60, 'dev_speakers': 20, 'number_of_epochs': 38, 'margin': 0.1}
    >>> small_data_preset(CorpusSize(6000, 1000000, 140000.0, 1000000)).name
    'none'
    """
    hours = size.minutes / 60.0
    if size.speakers >= LARGE_SPEAKERS and hours >= LARGE_HOURS:
        return Preset("none", {}, [f"{size.speakers} speakers, {hours:.0f} h: the paper's recipe "
                                   "(hparams/train.yaml) as it is, no preset"])
    if loss not in SMALL_DATA_MARGINS:
        raise ValueError(f"no small-data margin for loss {loss!r} (known: {', '.join(SMALL_DATA_MARGINS)})")
    notes = [f"small-data preset for {size.speakers} speakers, {size.minutes:g} min of audio "
             f"({size.items} training items of at most {SEGMENT_SECONDS:g}-{2 * SEGMENT_SECONDS:g} s)"]
    overrides = {"device": "cpu", "num_workers": 0, "augment": False, "speed_perturb": False,
                 "segment_seconds": SEGMENT_SECONDS, "crop_seconds": CROP_SECONDS, **SMALL_MODEL,
                 "batch_size": BATCH_SIZE, **SMALL_OPTIMISER}

    test = 0 if trial_list else min(MAX_TEST_SPEAKERS, max(2, size.speakers // 4))
    remaining = size.speakers - test
    dev = MIN_DEV_SPEAKERS if remaining - MIN_DEV_SPEAKERS >= MIN_TRAINING_SPEAKERS_WITH_VALIDATION else 0
    overrides.update(test_speakers=test, dev_speakers=dev)
    if test:
        notes.append(f"held-out test: {test} speakers (trials/heldout.txt, scored by score.py)")
    if dev:
        notes.append(f"validation: {dev} held-out speakers (per-epoch EER)")
    else:
        notes.append(f"validation is off: {remaining} speakers leave too few for {MIN_DEV_SPEAKERS} validation "
                     f"speakers and {MIN_TRAINING_SPEAKERS_WITH_VALIDATION} training speakers")

    training_items = max(1, size.items * (remaining - dev) // max(1, size.speakers))
    per_epoch = max(1, training_items // BATCH_SIZE)
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_ITERATIONS / per_epoch)))
    start, fix = (round(1 + fraction * epochs, 2) for fraction in MARGIN_RAMP)
    margin = SMALL_DATA_MARGINS[loss]
    overrides.update(number_of_epochs=epochs, margin=margin, margin_start_epoch=start, margin_fix_epoch=fix,
                     average_last=3)
    notes.append(f"{epochs} epochs of about {per_epoch} iterations (batch {BATCH_SIZE}); small ResNet "
                 f"{SMALL_MODEL['resnet_channels']}, Adam peak lr {SMALL_OPTIMISER['lr'] * BATCH_SIZE / 64:g}")
    notes.append(f"margin 0 -> {margin:g} from epoch {start:g} to {fix:g} "
                 f"({MARGIN_RAMP[0]:.0%}-{MARGIN_RAMP[1]:.0%} of the run); last 3 epochs averaged")
    return Preset("small-data", overrides, notes)


def small_data_finetune_preset(size, loss="sphereface2_c", trial_list=False):
    """Stage 2 (``hparams/finetune.yaml``) on the corpus of a stage-1 small-data preset.

    The stage-1 preset's data and model overrides (the same prepared data and held-out
    speakers, the same small ResNet) and its optimiser (Adam, batch 32); from the stage
    file, unchanged: its 5 epochs, its lr (1e-4 to 2.5e-5, scaled by batch / 64, one
    warm-up epoch from zero), its fixed margin ``lmf_margin`` of the loss block from the
    first iteration, no speed perturbation, the last epoch kept. Crops:
    ``FINETUNE_CROP_SECONDS``, about three times stage 1's and inside the shortest segment.

    Arguments
    ---------
    size, loss, trial_list
        As in :func:`small_data_preset`.

    Returns
    -------
    Preset

    Example
    -------
    >>> preset = small_data_finetune_preset(CorpusSize(speakers=251, files=251, minutes=52.35, items=926))
    >>> {k: preset.overrides[k] for k in ("crop_seconds", "batch_size", "test_speakers")}
    {'crop_seconds': 2.995, 'batch_size': 32, 'test_speakers': 60}
    >>> "lr" in preset.overrides or "margin" in preset.overrides
    False
    """
    first = small_data_preset(size, loss, trial_list)
    if first.name == "none":
        return first
    overrides = {k: v for k, v in first.overrides.items() if k not in FINETUNE_KEPT or k == "crop_seconds"}
    overrides.update(crop_seconds=FINETUNE_CROP_SECONDS, opt_class=SMALL_OPTIMISER["opt_class"])
    notes = [first.notes[0].replace("small-data preset", "small-data fine-tuning preset"),
             *[n for n in first.notes[1:3]],
             f"stage 2 of hparams/finetune.yaml: its epochs, lr and fixed lmf_margin; {FINETUNE_CROP_SECONDS:g} s "
             f"crops (stage 1: {CROP_SECONDS:g} s); Adam and batch {BATCH_SIZE} as stage 1"]
    return Preset("small-data", overrides, notes)


STAGES = {"train": small_data_preset, "finetune": small_data_finetune_preset}


def main(argv=None):
    """Command line: print the preset of a corpus folder."""
    parser = argparse.ArgumentParser(prog="python -m sb_sphereface2.training.presets",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("data_folder", help="folder of <speaker>/<recording> or <speaker>/<session>/<utt> audio")
    parser.add_argument("--loss", default="sphereface2_c", help="the loss block (default: sphereface2_c)")
    parser.add_argument("--stage", default="train", choices=sorted(STAGES),
                        help="train (hparams/train.yaml, default) or finetune (hparams/finetune.yaml)")
    parser.add_argument("--trial-list", action="store_true", help="a trial list is given: no held-out test speakers")
    parser.add_argument("--args", action="store_true", help="print only the overrides, one per line")
    parser.add_argument("--save", metavar="FILE", help="also write the overrides to FILE, one per line")
    args = parser.parse_args(argv)
    preset = STAGES[args.stage](measure_corpus(args.data_folder), args.loss, args.trial_list)
    if args.save:
        write_text_atomic(args.save, "".join(f"{argument}\n" for argument in preset.arguments()))
    if args.args:
        print("\n".join(preset.arguments()))
    else:
        print("\n".join([f"preset: {preset.name}", *(f"  {line}" for line in preset.notes),
                         "  overrides: " + " ".join(preset.arguments())]))
    return preset


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(fail(error, 1))
