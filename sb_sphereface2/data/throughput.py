"""Where training time goes: utterances/s of the loader, of the training step, per epoch.

:class:`ThroughputMeter` is fed by two Brain hooks (``on_fit_batch_start`` ->
:meth:`~ThroughputMeter.batch_start`, ``on_fit_batch_end`` ->
:meth:`~ThroughputMeter.batch_end`) and splits the epoch's wall time into

- the *step* (from ``on_fit_batch_start`` to ``on_fit_batch_end``: device transfer,
  augmentation, features, forward, backward, optimiser; CUDA is synchronised at the end
  so queued GPU work is counted here);
- *waiting* (everything between two steps: mostly waiting for the next batch; a
  checkpoint save in between counts too).

Batches of :mod:`sb_sphereface2.data.dataio` and :mod:`sb_sphereface2.data.shards` also
carry ``load_seconds`` (time each item took to read, resample and crop in its
worker), from which the meter gives the loader's utterances/s *per core*: the number of
loader cores a target rate needs is that target divided by it.

All rates are for this process; a DDP run of N processes reads N times as many.
"""

import time

import torch


class ThroughputMeter:
    """Utterances/s of the loader and of the training step, and seconds per epoch.

    Example
    -------
    >>> from types import SimpleNamespace
    >>> meter = ThroughputMeter()
    >>> meter.start_epoch()
    >>> for _ in range(3):
    ...     meter.batch_start(SimpleNamespace(id=["a"] * 8, load_seconds=torch.full((8,), 0.01)))
    ...     meter.batch_end()
    >>> stats = meter.summary()
    >>> stats["utterances"], round(stats["loader_utt_per_s_per_core"])
    (24, 100)
    >>> sorted(stats)  # doctest: +NORMALIZE_WHITESPACE
    ['epoch_s', 'loader_utt_per_s_per_core', 'step_utt_per_s', 'utt_per_s', 'utterances', 'wait_share']
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.start_epoch()

    def start_epoch(self):
        """Reset the counters (call at the start of each training epoch)."""
        self.epoch_start = self.clock()
        self.last_end = None
        self.began = None
        self.utterances = 0
        self.step_seconds = 0.0
        self.wait_seconds = 0.0
        self.load_seconds = 0.0

    def batch_start(self, batch):
        """A batch arrived (``on_fit_batch_start``): what came before was waiting."""
        now = self.clock()
        self.wait_seconds += now - (self.epoch_start if self.last_end is None else self.last_end)
        self.began = now
        self.utterances += len(batch.id)
        load = getattr(batch, "load_seconds", None)
        if load is not None:
            self.load_seconds += float(torch.as_tensor(load).sum())

    def batch_end(self, device=None):
        """The step is over (``on_fit_batch_end``); ``device``: synchronise CUDA first."""
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        now = self.clock()
        if self.began is not None:
            self.step_seconds += now - self.began
        self.last_end, self.began = now, None

    def summary(self):
        """This epoch so far: ``utterances``, ``epoch_s``, ``utt_per_s`` (overall),
        ``step_utt_per_s`` (if data were free), ``wait_share`` (fraction of the epoch
        spent between steps), ``loader_utt_per_s_per_core`` (when batches carry
        ``load_seconds``)."""
        end = self.last_end if self.last_end is not None else self.clock()
        epoch = max(end - self.epoch_start, 1e-9)
        stats = {
            "utterances": self.utterances,
            "epoch_s": epoch,
            "utt_per_s": self.utterances / epoch,
            "step_utt_per_s": self.utterances / max(self.step_seconds, 1e-9),
            "wait_share": self.wait_seconds / epoch,
        }
        if self.load_seconds > 0:
            stats["loader_utt_per_s_per_core"] = self.utterances / self.load_seconds
        return stats

    def text(self):
        """A short line for the progress bar.

        Example
        -------
        >>> ThroughputMeter().text()
        '0 utt/s (step 0, wait 0%)'
        """
        stats = self.summary()
        text = f"{stats['utt_per_s']:.0f} utt/s (step {stats['step_utt_per_s']:.0f}, wait {100 * stats['wait_share']:.0f}%"
        if "loader_utt_per_s_per_core" in stats:
            text += f", loader {stats['loader_utt_per_s_per_core']:.0f}/core"
        return text + ")"


def show_on_progress_bar(text, loader=None):
    """Put ``text`` in the description of the progress bar iterating ``loader`` (default:
    any DataLoader). SpeechBrain's Brain rewrites the bar's postfix every batch but never
    its description, so this is where the rates can be shown from a hook."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        iterable = getattr(bar, "iterable", None)
        if (loader is not None and iterable is loader) or (loader is None and isinstance(iterable, torch.utils.data.DataLoader)):
            bar.set_description_str(text, refresh=False)
