"""What a training run records for its curves, beside its ``train_log.txt``.

``TrainingDiagnostics`` is the Brain's recorder. Every few iterations (about
``RECORDS_PER_EPOCH`` times an epoch) it appends one line to ``train_records.jsonl``:
the iteration, epoch, lr and margin in force, and the means since the last record of the
loss, the raw-cosine error and mean own/other cosines, and, for SphereFace2 losses, of
the loss's own terms (``SphereFace2Loss.last_terms``: the bias b, the positive term
lambda * softplus(-z+), the negative term (1 - lambda) * sum softplus(z-) and the share of
negative logits above 0). At each epoch end it appends the epoch's histograms of the
own-class and other-class cosines of a sample of training batches (about
``HISTOGRAM_BATCHES`` an epoch) to ``train_histograms.jsonl``, and returns the epoch
means of the SphereFace2 terms for the log line.

Nothing is recomputed: the terms are the loss's detached tensors, summed on the device;
the host reads them once per record. The sums since the last record and of the epoch
are saved with every checkpoint, and on resume the files lose the lines after the
recovered checkpoint, so that a resumed run's files are the uninterrupted run's.
Under DDP the values are the means over processes (a sharded loss's terms are its
block's shares times N, whose mean is the global value); the histograms are summed over
processes and are not drawn for a head split over processes.
"""

import json
import os

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process

from sb_sphereface2.distributed import world_and_rank
from sb_sphereface2.files import write_text_atomic
from sb_sphereface2.losses.sphereface2 import TERM_NAMES
from sb_sphereface2.training.run_state import load_process_state, save_process_state

RECORDS_NAME = "train_records.jsonl"
HISTOGRAMS_NAME = "train_histograms.jsonl"
RECORDS_PER_EPOCH = 25
HISTOGRAM_BATCHES = 20
HISTOGRAM_BINS = 50  # over [-1, 1]
SPHEREFACE2_TERMS = ("bias",) + TERM_NAMES


def batch_terms(loss, loss_module):
    """The values recorded for one iteration: the loss, then the SphereFace2 terms of
    ``loss_module.last_terms`` (none for a loss without them), as one float64 tensor on
    the loss's device (no host synchronisation).

    Example
    -------
    >>> from sb_sphereface2 import SphereFace2Loss
    >>> loss_fn = SphereFace2Loss(num_classes=4, margin=0.0)
    >>> loss = loss_fn(torch.tensor([[0.5, -0.2, 0.1, 0.0]]), torch.tensor([0]))
    >>> terms = batch_terms(loss, loss_fn)
    >>> terms.shape, torch.isclose(terms[2] + terms[3], terms[0]).item()  # positive + negative = loss
    (torch.Size([5]), True)
    """
    parts = [loss.detach().reshape(())]
    terms = getattr(loss_module, "last_terms", None)
    if terms:
        parts += [terms[name].reshape(()).to(parts[0].device) for name in SPHEREFACE2_TERMS]
    return torch.stack([part.to(torch.float64) for part in parts])


def cosine_histograms(cosines, labels, bins=HISTOGRAM_BINS):
    """Counts of the own-class and of the other-class cosines of a batch over ``bins``
    equal bins on [-1, 1]: float64 [2, bins], on the cosines' device.

    Example
    -------
    >>> cos = torch.tensor([[0.9, -0.5, 0.1], [0.2, 0.95, -0.9]])
    >>> counts = cosine_histograms(cos, torch.tensor([0, 1]), bins=4)
    >>> counts.tolist()  # own: 0.9, 0.95; others: -0.5, 0.1, 0.2, -0.9
    [[0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 2.0, 0.0]]
    """
    cos = cosines.detach().reshape(cosines.shape[0], -1).float().clamp(-1.0, 1.0)
    own = cos.gather(1, labels.reshape(-1, 1).long().to(cos.device))
    own_counts = torch.histc(own, bins=bins, min=-1.0, max=1.0)
    all_counts = torch.histc(cos, bins=bins, min=-1.0, max=1.0)
    return torch.stack([own_counts, all_counts - own_counts]).to(torch.float64)


def keep_lines(path, keep):
    """Rewrite the JSON-lines file ``path`` (atomically) with the whole lines whose record
    ``keep(record)`` is true (a line cut by a kill is dropped); nothing when it is absent.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
    >>> _ = open(path, "w").write('{"iteration": 1}\\n{"iteration": 2}\\n{"itera')
    >>> keep_lines(path, lambda r: r["iteration"] <= 1)
    >>> open(path).read()
    '{"iteration": 1}\\n'
    """
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and keep(json.loads(line))]
    if kept != lines:
        write_text_atomic(path, "".join(kept))


def _append_line(path, record):
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


@register_checkpoint_hooks
class TrainingDiagnostics:
    """The Brain's recorder of ``train_records.jsonl`` and ``train_histograms.jsonl``
    (module docstring). The Brain calls ``train_start``, ``batch_end`` after every
    training batch, ``train_end`` (the epoch means of the SphereFace2 terms, for the log
    line) and ``resume`` after recovering a checkpoint; it is a checkpoint recoverable.

    Arguments
    ---------
    brain : SpeakerBrain
        The Brain (its optimizer, loss, counters, raw-cosine totals and ``_reduced``).
    folder : str or None
        Where the files go (the train log's folder); None: nothing is written.

    Example
    -------
    >>> import tempfile
    >>> diagnostics = TrainingDiagnostics(brain=None, folder=tempfile.mkdtemp())
    >>> os.path.basename(diagnostics.records_path)
    'train_records.jsonl'
    """

    def __init__(self, brain, folder):
        self.brain = brain
        self.folder = folder
        self.records_path = os.path.join(folder, RECORDS_NAME) if folder else None
        self.histograms_path = os.path.join(folder, HISTOGRAMS_NAME) if folder else None
        self.state = None
        self.resumed = None
        self.epoch = None

    # --- the epoch's running sums ------------------------------------------------------

    def _fresh_state(self):
        return {"interval": None, "interval_batches": 0, "epoch_sums": None, "epoch_batches": 0,
                "totals_mark": torch.zeros(4, dtype=torch.float64), "histograms": None}

    def train_start(self, epoch):
        """The start of an epoch's training stage (after a mid-epoch resume: its sums so far)."""
        resumed, self.resumed = self.resumed, None
        self.state = resumed if resumed is not None else self._fresh_state()
        self.epoch = int(epoch or 0)

    def batch_end(self, batch, predictions, loss):
        """After a training batch: add its terms (and, for a sampled batch, its cosine
        histograms) to the running sums; write a record every few batches."""
        brain, state = self.brain, self.state
        values = batch_terms(loss, brain.hparams.compute_cost)
        state["interval"] = values if state["interval"] is None else state["interval"] + values
        state["epoch_sums"] = values if state["epoch_sums"] is None else state["epoch_sums"] + values
        state["interval_batches"] += 1
        state["epoch_batches"] += 1
        per_epoch = brain.iterations_per_epoch or 1
        if self._histograms_on() and brain.step % max(1, round(per_epoch / HISTOGRAM_BATCHES)) == 0:
            counts = cosine_histograms(predictions, batch.spk_id_encoded[0])
            state["histograms"] = counts if state["histograms"] is None else state["histograms"] + counts
        if brain.step % max(1, per_epoch // RECORDS_PER_EPOCH) == 0 or brain.step == per_epoch:
            self._write_record()

    def _histograms_on(self):
        head = self.brain.hparams.classifier
        return not (getattr(head, "is_sharded", False) and head.world_size > 1)

    def _world(self):
        return world_and_rank()[0] if self.brain.distributed_launch else 1

    def _write_record(self):
        """The record of the batches since the last one (every process reduces; the main
        process writes)."""
        brain, state = self.brain, self.state
        if not state["interval_batches"]:
            return
        totals = brain.train_totals.double().cpu().clone()  # (the Brain adds to it in place)
        delta = totals - state["totals_mark"]
        means = state["interval"].cpu() / state["interval_batches"]
        reduced = brain._reduced(torch.cat([means, delta]))
        means, delta = reduced[:len(means)] / self._world(), reduced[len(means):]
        errors, own, other, count = delta.tolist()
        record = {
            "iteration": int(brain.optimizer_step),
            "epoch": self.epoch,
            "lr": float(brain.optimizer.param_groups[0]["lr"]),
            "margin": float(brain.hparams.compute_cost.margin),
            "loss": means[0].item(),
            "error": errors / max(1.0, count),
            "cos_own": own / max(1.0, count),
            "cos_other": other / max(1.0, count),
        }
        record.update(zip(SPHEREFACE2_TERMS, means[1:].tolist()))
        state["interval"], state["interval_batches"], state["totals_mark"] = None, 0, totals
        if self.records_path and if_main_process():
            _append_line(self.records_path, record)

    def train_end(self):
        """The end of the epoch's training stage: the last record, the histograms line;
        returns the epoch means of the SphereFace2 terms (empty for other losses)."""
        state = self.state
        self._write_record()  # batches after the last record (a loader of uneven length)
        if state["epoch_sums"] is None:
            return {}
        means = self.brain._reduced(state["epoch_sums"].cpu() / state["epoch_batches"]) / self._world()
        if self._histograms_on():
            counts = state["histograms"]
            counts = torch.zeros(2, HISTOGRAM_BINS, dtype=torch.float64) if counts is None else counts.cpu()
            counts = self.brain._reduced(counts)
            if self.histograms_path and if_main_process():
                _append_line(self.histograms_path, {
                    "epoch": self.epoch, "iteration": int(self.brain.optimizer_step),
                    "edges": torch.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1).tolist(),
                    "own": counts[0].tolist(), "other": counts[1].tolist(),
                })
        return dict(zip(SPHEREFACE2_TERMS, means[1:].tolist()))

    def resume(self, iterations_done, epochs_done):
        """After recovering a checkpoint (main process): drop the records after its
        iteration and the histograms after its last whole epoch."""
        if not self.folder or not if_main_process():
            return
        keep_lines(self.records_path, lambda record: record["iteration"] <= iterations_done)
        keep_lines(self.histograms_path, lambda record: record["epoch"] <= epochs_done)

    # --- checkpoint hooks --------------------------------------------------------------

    @mark_as_saver
    def _save(self, path):
        state = self.state if self.state is not None else self._fresh_state()
        save_process_state({key: value.cpu() if torch.is_tensor(value) else value for key, value in state.items()},
                           path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        device = self.brain.device if self.brain is not None else "cpu"
        state = None if end_of_epoch else load_process_state(path)
        if state is not None:
            for key in ("interval", "epoch_sums", "histograms"):
                if state[key] is not None:
                    state[key] = state[key].to(device)
        self.resumed = state
