"""A training run you can watch: what ``SpeakerBrain`` calls so that its run folder holds
the curves of the run.

``RunWatch`` holds the run's ``TrainingDiagnostics`` (records and cosine histograms
beside the train log, SphereFace2's terms in the log line), redraws
``training_curves.png`` from the run folder's files after every epoch and on resume, and,
with ``tensorboard: True``, logs the same values through SpeechBrain's
``TensorboardLogger`` into ``<output_folder>/tensorboard`` (``tensorboard_epoch``),
each at its iteration, so that a resumed run continues the curves where its checkpoint
left them.
"""

import logging
import os

from speechbrain.utils.distributed import if_main_process

from sb_sphereface2.errors import os_error_line
from sb_sphereface2.training.curves import read_run, write_run_curves
from sb_sphereface2.training.diagnostics import TrainingDiagnostics

logger = logging.getLogger(__name__)

TENSORBOARD_FOLDER = "tensorboard"
_EPOCH_KEYS = ("iteration", "epoch")


def tensorboard_epoch(writer, run, epoch):
    """Log epoch ``epoch`` of a run read by ``curves.read_run`` to a TensorBoard
    ``SummaryWriter``: every record's values (``train/<key>``, SphereFace2's terms as
    ``sphereface2/<key>``) at its iteration, the validation EER and minDCF
    (``valid/<key>``) and the cosine histograms (``cosines/own``, ``cosines/other``) at
    the epoch's last iteration.

    Example
    -------
    >>> import tempfile
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    >>> folder = tempfile.mkdtemp()
    >>> writer = SummaryWriter(folder)
    >>> run = {"records": [{"iteration": 3, "epoch": 1, "loss": 2.5, "bias": -8.0}], "histograms": [],
    ...        "epochs": [{"epoch": 1, "iterations": 3, "valid EER": 12.5}]}
    >>> tensorboard_epoch(writer, run, 1)
    >>> writer.close()
    >>> events = EventAccumulator(folder)
    >>> _ = events.Reload()
    >>> sorted(events.Tags()["scalars"]), [(e.step, e.value) for e in events.Scalars("train/loss")]
    (['sphereface2/bias', 'train/loss', 'valid/EER'], [(3, 2.5)])
    """
    from sb_sphereface2.training.diagnostics import SPHEREFACE2_TERMS

    for record in run["records"]:
        if record["epoch"] != epoch:
            continue
        for key, value in record.items():
            if key not in _EPOCH_KEYS and isinstance(value, (int, float)):
                group = "sphereface2" if key in SPHEREFACE2_TERMS else "train"
                writer.add_scalar(f"{group}/{key}", value, record["iteration"])
    for row in run["epochs"]:
        if row.get("epoch") == epoch:
            for key, value in row.items():
                if key.startswith("valid ") and isinstance(value, (int, float)):
                    writer.add_scalar(f"valid/{key[len('valid '):]}", value, row["iterations"])
    for histogram in run["histograms"]:
        if histogram["epoch"] != epoch:
            continue
        edges = histogram["edges"]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        for name in ("own", "other"):
            counts = histogram[name]
            writer.add_histogram_raw(
                f"cosines/{name}", min=edges[0], max=edges[-1], num=sum(counts),
                sum=sum(c * x for c, x in zip(counts, centres)),
                sum_squares=sum(c * x * x for c, x in zip(counts, centres)),
                bucket_limits=edges[1:], bucket_counts=counts, global_step=histogram["iteration"],
            )
    writer.flush()


class RunWatch:
    """The Brain's side of a run you can watch (module docstring).

    Arguments
    ---------
    brain : SpeakerBrain
        The Brain; its ``train_logger.save_file`` names the run folder (no file logger:
        nothing is written), ``hparams.tensorboard`` switches TensorBoard on.

    Example
    -------
    >>> from types import SimpleNamespace
    >>> brain = SimpleNamespace(hparams=SimpleNamespace(), device="cpu")
    >>> RunWatch(brain).folder is None
    True
    """

    def __init__(self, brain):
        self.brain = brain
        path = getattr(getattr(brain.hparams, "train_logger", None), "save_file", None)
        self.folder = os.path.dirname(os.path.abspath(path)) if path else None
        self.diagnostics = TrainingDiagnostics(brain, self.folder)
        self.tensorboard = bool(getattr(brain.hparams, "tensorboard", False)) and self.folder is not None
        self.tensorboard_logger = None

    def attach(self, checkpointer):
        """Save the epoch's running sums with every checkpoint."""
        checkpointer.add_recoverable("training_diagnostics", self.diagnostics, optional_load=True)

    def resume(self, iterations_done, epochs_done):
        """After a checkpoint is recovered (and the train log kept to its epochs): the
        files kept to it, the picture redrawn when an epoch is done."""
        self.diagnostics.resume(iterations_done, epochs_done)
        if self.folder and epochs_done and if_main_process():
            self._redraw()

    def _redraw(self):
        """The picture is a view of the log: when it cannot be written (a full disk), the
        earlier picture stays (it is written atomically), a warning says why, and training
        goes on; the checkpoint or the log that needs the disk fails with its own line."""
        try:
            write_run_curves(self.folder)
        except OSError as error:
            logger.warning("training picture not redrawn in %s: %s", self.folder, os_error_line(error))

    def train_start(self, epoch):
        self.diagnostics.train_start(epoch)

    def batch_end(self, batch, predictions, loss):
        self.diagnostics.batch_end(batch, predictions, loss)

    def train_end(self):
        """The epoch means of SphereFace2's terms, for the log line."""
        return self.diagnostics.train_end()

    def epoch_done(self, epoch):
        """After the epoch's checkpoint and log line: the picture, TensorBoard."""
        if not self.folder or not if_main_process():
            return
        self._redraw()
        if self.tensorboard:
            if self.tensorboard_logger is None:
                from speechbrain.utils.train_logger import TensorboardLogger

                self.tensorboard_logger = TensorboardLogger(os.path.join(self.folder, TENSORBOARD_FOLDER))
            tensorboard_epoch(self.tensorboard_logger.writer, read_run(self.folder), epoch)
