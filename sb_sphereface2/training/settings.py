"""Checks of the training recipe's hyperparameters before any work is done.

``checked_settings(stage_file, overrides)`` composes the stage file with the overrides and
checks, in this order:

- keys: an override of a key that the hyperparameters do not have is an
  ``UnknownKeyError`` naming the nearest known keys (:mod:`sb_sphereface2.hparams`);
- types: an override must have the kind of value of the key's default (a number for a
  number, ``True``/``False`` for a flag, a list for a list), so ``--number_of_epochs=abc``
  names ``number_of_epochs`` instead of failing later inside ``int()``;
- ranges and choices: ``RANGES`` and ``CHOICES`` below (epochs >= 1, learning rates > 0,
  ``data_source`` csv or shards...), and the loss: its ``loss_settings`` are built (a
  ``SphereFace2Settings`` checks scale, lambda and t itself) and every margin key
  (``margin``, ``initial_margin``, ``lmf_margin``) is checked by the loss class's own
  margin rule (``margin_rule``), so that the recipe and the loss never disagree.

Each failure is a ``SettingsError`` (a ``ValueError``) of one line naming the key and the
value; recipes print it and exit with code 2, before data preparation.
"""

import math
import pydoc
from dataclasses import dataclass

from sb_sphereface2.data.split import SEGMENTATION_MODES
from sb_sphereface2.hparams import BLOCK_KEYS, HparamsError, peek_hparams, peek_object


class SettingsError(HparamsError):
    """A hyperparameter has a value of the wrong type or outside its range."""


@dataclass(frozen=True)
class Range:
    """The values a numeric hyperparameter may take.

    Example
    -------
    >>> Range(integer=True, low=1).check("number_of_epochs", 0)
    Traceback (most recent call last):
    ...
    sb_sphereface2.training.settings.SettingsError: number_of_epochs must be an integer >= 1, got 0
    """

    integer: bool = False
    low: float = None
    low_open: bool = False  # low itself excluded
    high: float = None
    high_open: bool = True

    def describe(self):
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return ("an integer" if self.integer else "a number") + (" " + " and ".join(bounds) if bounds else "")

    def check(self, key, value):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and math.isfinite(value) and (not self.integer or isinstance(value, int))
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise SettingsError(f"{key} must be {self.describe()}, got {value!r}")


POSITIVE = Range(low=0, low_open=True)
RANGES = {
    "number_of_epochs": Range(integer=True, low=1),
    "batch_size": Range(integer=True, low=1),
    "average_last": Range(integer=True, low=1),
    "seed": Range(integer=True),
    "split_seed": Range(integer=True),
    "num_workers": Range(integer=True, low=0),
    "dev_speakers": Range(integer=True, low=0),
    "dev_trials": Range(integer=True, low=0),
    "sample_rate": Range(integer=True, low=1),
    "n_mels": Range(integer=True, low=1),
    "emb_dim": Range(integer=True, low=1),
    "crop_seconds": POSITIVE,
    "lr": POSITIVE,
    "final_lr": POSITIVE,
    "warmup_epochs": Range(low=0),
    "margin_start_epoch": Range(low=0),
    "margin_fix_epoch": Range(low=0),
    "ckpt_interval_minutes": Range(low=0),
    "augment_prob": Range(low=0, high=1, high_open=False),
    "test_speakers": Range(integer=True, low=0),
    "test_trials": Range(integer=True, low=0),
    "segment_seconds": POSITIVE,
    "min_audio_seconds": Range(low=0),
    "prep_workers": Range(integer=True, low=1),
    "utterances_per_shard": Range(integer=True, low=1),
    "shuffle_buffer": Range(integer=True, low=0),
}
CHOICES = {
    "data_source": ("csv", "shards"),
    "segmentation": SEGMENTATION_MODES,
}
MARGIN_KEYS = ("margin", "initial_margin", "lmf_margin")


def checked_settings(stage_file, overrides):
    """The composed hyperparameters (plain values, nothing built) after every check.

    Arguments
    ---------
    stage_file : str
        The recipe's stage file.
    overrides : dict
        Command-line overrides.

    Returns
    -------
    dict
        ``peek_hparams(stage_file, overrides)``.

    Example
    -------
    >>> checked_settings("hparams/train.yaml", {"data_folder": "/data"})["number_of_epochs"]
    150
    >>> checked_settings("hparams/train.yaml", {"number_of_epochs": "abc"})
    Traceback (most recent call last):
    ...
    sb_sphereface2.training.settings.SettingsError: number_of_epochs must be an integer >= 1, got 'abc'
    >>> checked_settings("hparams/train.yaml", {"loss": "sphereface2_m", "margin": 0.5})
    Traceback (most recent call last):
    ...
    sb_sphereface2...SettingsError: margin: the type M margin is an angle multiplier and must be >= 1, got 0.5
    """
    settings = peek_hparams(stage_file, overrides)  # unknown keys: UnknownKeyError
    blocks = {key: overrides[key] for key in BLOCK_KEYS if key in overrides}
    check_types(overrides, peek_hparams(stage_file, blocks))
    check_ranges(settings)
    check_loss(settings, stage_file, overrides)
    return settings


def check_types(overrides, defaults, where=""):
    """Each override has the kind of value of its default (None defaults take anything).

    Example
    -------
    >>> check_types({"lr": 1, "augment": "no"}, {"lr": 0.1, "augment": True})
    Traceback (most recent call last):
    ...
    sb_sphereface2.training.settings.SettingsError: augment must be True or False, got 'no'
    """
    for key, value in overrides.items():
        if key in BLOCK_KEYS or key not in defaults:
            continue
        default, name = defaults[key], f"{where}{key}"
        if isinstance(default, dict) and isinstance(value, dict):
            check_types(value, default, where=f"{name}.")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise SettingsError(f"{name} must be True or False, got {value!r}")
        elif isinstance(default, (int, float)):
            RANGES.get(key, Range(integer=isinstance(default, int))).check(name, value)
        elif isinstance(default, list) and not isinstance(value, list):
            raise SettingsError(f"{name} must be a list such as [a, b], got {value!r}")
        elif isinstance(default, str) and isinstance(value, (list, dict)):
            raise SettingsError(f"{name} must be a single value, got {value!r}")


def check_ranges(settings):
    """Every key of ``RANGES`` that the settings have lies in its range, and the epoch
    settings agree with each other.

    Example
    -------
    >>> check_ranges({"lr": 0.1, "margin_start_epoch": 40, "margin_fix_epoch": 20})
    Traceback (most recent call last):
    ...
    sb_sphereface2.training.settings.SettingsError: margin_fix_epoch must be >= margin_start_epoch (40), got 20
    """
    for key, allowed in RANGES.items():
        if settings.get(key) is not None:  # None: the key's automatic choice
            allowed.check(key, settings[key])
    for key, choices in CHOICES.items():
        if key in settings and settings[key] not in choices:
            raise SettingsError(f"{key} must be one of {', '.join(choices)}, got {settings[key]!r}")
    pairs = (("margin_start_epoch", "margin_fix_epoch"), ("warmup_epochs", "number_of_epochs"))
    for first, second in pairs:
        if first in settings and second in settings and settings[second] < settings[first]:
            raise SettingsError(f"{second} must be >= {first} ({settings[first]}), got {settings[second]}")


def check_loss(settings, stage_file, overrides):
    """The loss block's settings (``loss_settings``, built: their own checks) and every
    margin key of ``settings`` against the margin rule of the loss class that
    ``compute_cost`` names (``margin_rule``): the recipe keeps no copy of the ranges.

    Example
    -------
    >>> check_loss({"margin": -0.5}, "hparams/train.yaml", {})
    Traceback (most recent call last):
    ...
    sb_sphereface2...SettingsError: margin: the type C margin must be >= 0, got -0.5
    >>> check_loss({"lmf_margin": 1.5}, "hparams/train.yaml", {"loss": "aam"})
    Traceback (most recent call last):
    ...
    sb_sphereface2...SettingsError: lmf_margin: the AAM margin must be in [0, 1.5) radians, got 1.5
    """
    tag, _ = peek_object(stage_file, "compute_cost", overrides)
    if not tag:
        return
    loss_class = pydoc.locate(tag.split(":", 1)[-1])
    if not (isinstance(loss_class, type) and hasattr(loss_class, "margin_rule")):
        return  # a loss of the user's own: its constructor checks its margin
    loss_settings = None
    settings_tag, settings_args = peek_object(stage_file, "loss_settings", overrides)
    if settings_tag:
        try:
            loss_settings = pydoc.locate(settings_tag.split(":", 1)[-1])(**settings_args)
        except (TypeError, ValueError) as error:
            raise SettingsError(f"loss_settings: {error}") from None
    rule = loss_class.margin_rule(loss_settings)
    for key in MARGIN_KEYS:
        if key in settings:
            try:
                rule(settings[key])
            except ValueError as error:
                raise SettingsError(f"{key}: {error}") from None
