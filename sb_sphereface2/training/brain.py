"""``SpeakerBrain``: SpeechBrain's ``Brain`` for speaker-embedding training with a cosine
head and a SphereFace2 (or AAM) loss.

Per iteration, before the forward pass, the margin and the learning rate are set from
the optimizer-step counter that ``Brain`` checkpoints (``MarginScheduler``,
``WarmupExponentialLR``), so a resumed run follows the uninterrupted schedules. Each
epoch ends with a validation stage: embeddings of the held-out speakers' utterances
(whole utterances, one at a time), the EER and minDCF of their trial list, and the epoch
checkpoint. The training log reports, besides the loss, the classification error of the
raw cosines (argmax of the cosines against the label: unaffected by the margin) and the
mean cosine with the own class and with the other classes.

Resuming continues the uninterrupted run: the checkpoints also hold the random generators
of every process (``RandomStates``) and, for mid-epoch checkpoints
(``ckpt_interval_minutes`` / ``ckpt_interval_steps``), the epoch's running training
statistics; the training loader draws its workers' seeds from its own generator,
seeded from (seed, epoch, process), so that nothing draws from the restored global
generators before the first batch. After recovery the train log keeps the lines of the
epochs the checkpoint has done (a kill between checkpoint and log line is repaired from
the checkpoint's meta, which holds the line's values).
"""

import logging
import os

import numpy as np
import speechbrain as sb
import torch
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.checkpoints import DEFAULT_SAVE_HOOKS, get_default_hook
from speechbrain.utils.distributed import if_main_process

from sb_sphereface2.data.throughput import ThroughputMeter, show_on_progress_bar
from sb_sphereface2.distributed import world_and_rank
from sb_sphereface2.files import plain_value, write_text_atomic
from sb_sphereface2.scoring.metrics import compute_eer, compute_min_dcf
from sb_sphereface2.scoring.trial_scores import score_trial_list
from sb_sphereface2.training.cosine_statistics import raw_cosine_statistics, sharded_raw_cosine_statistics
from sb_sphereface2.training.run_state import RandomStates, load_process_state, save_process_state
from sb_sphereface2.training.watch import RunWatch

logger = logging.getLogger(__name__)


class NonFiniteBatchError(ValueError):
    """The network produced non-finite values for a batch (names its utterances)."""


class SpeakerBrain(sb.core.Brain):
    """Speaker-embedding training: per-iteration margin and lr schedules, raw-cosine
    training statistics, validation EER on held-out speakers, epoch checkpoints.

    Expects in ``hparams``: ``margin_scheduler``, ``lr_scheduler`` (ours, or SpeechBrain's
    ``CyclicLRScheduler``), ``compute_cost``, ``embedding_model``, ``augment``,
    ``wav_augment`` (when augmenting), ``average_last``, ``train_logger``,
    ``epoch_counter``; ``modules`` holds ``compute_features``, ``mean_var_norm``,
    ``embedding_model``, ``classifier`` and ``compute_cost``. Set ``dev_trials`` (a
    ``TrialList``) before ``fit`` to score the validation set, which is given to ``fit``
    as ``valid_set`` (an empty dataset when there is none: the checkpoint is saved in
    the validation stage either way).
    """

    dev_trials = None
    iterations_per_epoch = None
    loader_generator = None  # seeds the training loader's workers; reseeded every epoch
    resumed_totals = None  # this epoch's statistics so far, from a mid-epoch checkpoint
    progress_every = 20  # batches between throughput updates of the progress bar

    def fit(self, epoch_counter, train_set, valid_set=None, *args, **kwargs):
        # A prebuilt loader (the shard path) does not go through make_dataloader.
        if isinstance(train_set, torch.utils.data.DataLoader):
            self.iterations_per_epoch = len(train_set)
        return super().fit(epoch_counter, train_set, valid_set, *args, **kwargs)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        if stage == sb.Stage.TRAIN and loader_kwargs.get("generator") is None:
            # Without a generator of its own, each new loader iterator draws a seed from
            # torch's global generator, which a resumed run has just restored.
            self.loader_generator = loader_kwargs["generator"] = torch.Generator()
        if torch.device(self.device).type == "cuda":  # page-locked batches: copied without blocking
            loader_kwargs.setdefault("pin_memory", True)
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.iterations_per_epoch = len(loader)
            if self.iterations_per_epoch < 1:
                raise ValueError(
                    f"the training set gives no batch: {len(dataset)} utterances for a batch of "
                    f"{loader_kwargs.get('batch_size')} per process with drop_last; lower batch_size"
                )
        return loader

    def on_fit_start(self):
        # SpeechBrain 1.1.2 has no hook to choose what _wrap_distributed wraps: it
        # DDP-wraps every trainable module and converts BatchNorm to SyncBatchNorm, which
        # has no CPU kernels and would broadcast rank 0's rows over a sharded head. This
        # public hook does the default's work with a wrapping that skips sharded modules
        # and keeps BatchNorm on CPU.
        self._compile()
        self.watch = RunWatch(self)  # records, SphereFace2's terms, the picture, TensorBoard
        if self.distributed_launch:
            self._wrap_for_ddp()
        self.init_optimizers()
        if self.checkpointer is not None:
            self._add_resume_state()
            self.watch.attach(self.checkpointer)
            self.checkpointer.recover_if_possible()
            if self.optimizer_step > 0:  # the values in force at the last iteration done
                self._set_schedules(self.optimizer_step - 1)
            self._resume_train_log()
            self.watch.resume(self.optimizer_step, getattr(getattr(self.hparams, "epoch_counter", None), "current", 0))

    def _add_resume_state(self):
        """What a checkpoint holds besides the modules, the optimizer and the counters, so
        that a resumed run continues the uninterrupted one."""
        self.checkpointer.add_recoverable("random_states", RandomStates(), optional_load=True)
        self.checkpointer.add_recoverable(
            "train_statistics", self, custom_save_hook=_save_statistics,
            custom_load_hook=_load_statistics, optional_load=True,
        )
        scheduler = self.hparams.lr_scheduler
        if get_default_hook(scheduler, DEFAULT_SAVE_HOOKS) is not None:  # a schedule with state (cyclic)
            self.checkpointer.add_recoverable("lr_scheduler", scheduler, optional_load=True)

    def _wrap_for_ddp(self):
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = torch.device(self.device).type == "cuda"
        for name, module in self.modules.items():
            if getattr(module, "is_sharded", False) or not any(p.requires_grad for p in module.parameters()):
                continue
            if on_gpu:
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
            self.modules[name] = DistributedDataParallel(
                module,
                device_ids=[self.device] if on_gpu and self.distributed_backend != "gloo" else None,
                find_unused_parameters=self.find_unused_parameters,
            )

    def init_optimizers(self):
        super().init_optimizers()
        if self.checkpointer is not None and any(getattr(m, "is_sharded", False) for m in self.modules.values()):
            from sb_sphereface2.distributed import load_optimizer_per_process, save_optimizer_per_process

            # Each process's optimizer state covers its own head rows: one file per process.
            self.checkpointer.add_recoverable(
                "optimizer", self.optimizer,
                custom_save_hook=save_optimizer_per_process, custom_load_hook=load_optimizer_per_process,
            )

    # --- schedules -------------------------------------------------------------------

    def on_fit_batch_start(self, batch, should_step):
        self.throughput.batch_start(batch)
        self._set_schedules(self.optimizer_step)  # optimizer steps done so far: this iteration's index

    def _set_schedules(self, iteration):
        """The margin and the learning rate of iteration ``iteration`` (from 0)."""
        self.hparams.margin_scheduler.step(self.hparams.compute_cost, iteration, self.iterations_per_epoch)
        scheduler = self.hparams.lr_scheduler
        if not hasattr(scheduler, "on_batch_end"):  # SpeechBrain's cyclic schedule steps after
            scheduler.step(self.optimizer, iteration, self.iterations_per_epoch)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        scheduler = self.hparams.lr_scheduler
        if should_step and hasattr(scheduler, "on_batch_end"):
            scheduler.on_batch_end(self.optimizer)
        self.throughput.batch_end(self.device)
        self.watch.batch_end(batch, outputs, loss)
        if self.step % self.progress_every == 0:
            show_on_progress_bar(self.throughput.text())

    # --- forward and objectives ------------------------------------------------------

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device, non_blocking=True)
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            wavs, lens = self.hparams.wav_augment(wavs, lens)
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        embeddings = self.modules.embedding_model(feats, lens)
        if stage != sb.Stage.TRAIN:
            return embeddings
        return self.modules.classifier(embeddings)

    def compute_objectives(self, predictions, batch, stage):
        if stage != sb.Stage.TRAIN:
            embeddings = predictions.detach().float().reshape(len(batch.id), -1).cpu()
            self._check_finite(embeddings, batch.id, "embeddings")
            self.valid_ids.extend(batch.id)
            self.valid_embeddings.append(embeddings)
            return torch.zeros((), device=self.device)
        spkid, _ = batch.spk_id_encoded
        self._check_finite(predictions, batch.id, "cosines")
        loss = self.modules.compute_cost(predictions, spkid)
        self._count(predictions.detach(), spkid)
        return loss

    @staticmethod
    def _check_finite(values, ids, what):
        # One reduction and one host synchronisation: the sum is finite unless a value is
        # not (or finite values overflow it: the exact check then finds none bad).
        if not bool(torch.isfinite(values.sum())) and not bool(torch.isfinite(values).all()):
            shown = ", ".join(list(ids)[:8]) + (" ..." if len(ids) > 8 else "")
            raise NonFiniteBatchError(
                f"non-finite {what} for the batch of utterances {shown} (damaged audio? check "
                "these files, or lower the learning rate)"
            )

    def _count(self, predictions, spkid):
        head = self.hparams.classifier
        if getattr(head, "is_sharded", False) and head.world_size > 1:
            totals = sharded_raw_cosine_statistics(predictions, spkid, head.start, head.num_classes)
        else:
            totals = raw_cosine_statistics(predictions, spkid)
        if self.train_totals.device != totals.device:  # kept on the device: no copy per step
            self.train_totals = self.train_totals.to(totals.device)
        self.train_totals += totals.double()

    # --- stages ------------------------------------------------------------------------

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            resumed, self.resumed_totals = self.resumed_totals, None
            self.train_totals = resumed if resumed is not None else torch.zeros(4, dtype=torch.float64)
            self.throughput = ThroughputMeter()  # after a mid-epoch resume: the rest of the epoch
            self.watch.train_start(epoch)
            if self.loader_generator is not None:
                self.loader_generator.manual_seed(self._loader_seed(epoch))
        else:
            self.valid_ids, self.valid_embeddings = [], []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            errors, own, others, count = self._reduced(self.train_totals).tolist()
            speed = self.throughput.summary()
            self.train_stats = {
                "loss": stage_loss,
                "error": errors / max(1.0, count),
                "cos_own": own / max(1.0, count),
                "cos_other": others / max(1.0, count),
                **self.watch.train_end(),  # SphereFace2's terms, epoch means
            }
            self.epoch_meta = {
                "epoch": epoch,
                "iterations": self.optimizer_step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "margin": float(self.hparams.compute_cost.margin),
                # this process's rates: where the epoch's time went (loader or step)
                "epoch_s": round(speed["epoch_s"], 1),
                "utt_per_s": round(speed["utt_per_s"], 1),
                "step_utt_per_s": round(speed["step_utt_per_s"], 1),
                "wait_share": round(speed["wait_share"], 3),
            }
            if "loader_utt_per_s_per_core" in speed:
                self.epoch_meta["loader_utt_per_s_per_core"] = round(speed["loader_utt_per_s_per_core"], 1)
            return
        valid = self.validation_metrics()
        line = {"stats_meta": self.epoch_meta, "train_stats": self.train_stats, "valid_stats": valid or None}
        self.checkpointer.save_and_keep_only(
            # the log line's values in order (meta files sort the keys of mappings)
            meta={"epoch": epoch, **plain_value(valid), "train_log": plain_value({k: list(v.items()) if v else v
                                                                       for k, v in line.items()})},
            num_to_keep=self.hparams.average_last,
            ckpt_predicate=lambda c: "epoch" in c.meta,
        )
        # The epoch's checkpoint replaces its mid-epoch ones.
        self.checkpointer.delete_checkpoints(num_to_keep=0, ckpt_predicate=lambda c: INTRA_EPOCH_CKPT_FLAG in c.meta)
        # Logged after the checkpoint: an epoch in the log is an epoch a rerun resumes after.
        self._log_stats(line)
        self.watch.epoch_done(epoch)  # the picture from the log, TensorBoard

    def _log_stats(self, line):
        train_logger = self.hparams.train_logger
        try:
            train_logger.log_stats(**line)
        except OSError as error:  # a write error names no file
            raise OSError(error.errno, error.strerror, getattr(train_logger, "save_file", None)) from None

    def _loader_seed(self, epoch):
        seed = int(getattr(self.hparams, "seed", 0))
        rank = world_and_rank()[1]
        return ((seed * 1_000_003 + int(epoch or 0)) * 1_009 + rank) % 2**63

    def _resume_train_log(self):
        """Keep the train log's lines of the epochs that the recovered checkpoint has done
        (a resumed run logs the others again); restore the line of its last epoch from
        the checkpoint's meta when a kill came between the checkpoint and the line."""
        train_logger = getattr(self.hparams, "train_logger", None)
        path = getattr(train_logger, "save_file", None)
        counter = getattr(self.hparams, "epoch_counter", None)
        if path is None or counter is None or not if_main_process():
            return
        done = counter.current
        lines = open(path, encoding="utf-8").read().splitlines(keepends=True) if os.path.isfile(path) else []
        kept = [
            line for line in lines  # a line cut by a kill has no newline
            if line.endswith("\n") and (_logged_epoch(line) is None or _logged_epoch(line) <= done)
        ]
        if kept != lines:
            write_text_atomic(path, "".join(kept))
        if done and done not in {_logged_epoch(line) for line in kept}:
            saved = self.checkpointer.find_checkpoints(
                ckpt_predicate=lambda c: c.meta.get("epoch") == done and "train_log" in c.meta,
                max_num_checkpoints=1,
            )
            if saved:
                line = {k: dict(v) if v else v for k, v in saved[0].meta["train_log"].items()}
                self._log_stats({**line, "verbose": False})

    def _reduced(self, totals):
        """Sum statistics over DDP processes (each saw its own part of the epoch)."""
        if not self.distributed_launch:
            return totals
        device = self.device if torch.device(self.device).type == "cuda" else "cpu"
        totals = totals.to(device)
        torch.distributed.all_reduce(totals)
        return totals.cpu()

    def validation_metrics(self):
        """EER (%) and minDCF (p = 0.01) of the held-out speakers' trials, cosine scoring."""
        if self.dev_trials is None or not self.valid_ids:
            return {}
        embeddings = torch.cat(self.valid_embeddings).numpy().astype(np.float64)
        scores = score_trial_list(self.valid_ids, embeddings, self.dev_trials).scores
        labels = self.dev_trials.labels
        return {
            "EER": 100.0 * compute_eer(scores, labels)[0],
            "minDCF": compute_min_dcf(scores, labels, p_target=0.01)[0],
        }


def _save_statistics(brain, path):
    """Checkpointer hook (every process): the epoch's training statistics so far."""
    totals = getattr(brain, "train_totals", None)
    save_process_state(totals.cpu() if totals is not None else torch.zeros(4, dtype=torch.float64), path)


def _load_statistics(brain, path, end_of_epoch):
    """Checkpointer hook: a mid-epoch checkpoint's statistics continue the epoch."""
    brain.resumed_totals = None if end_of_epoch else load_process_state(path)


def _logged_epoch(line):
    """The epoch of a train-log line (``epoch: 3, ...``), or None."""
    head = line.split(",", 1)[0]
    if not head.startswith("epoch:"):
        return None
    try:
        return int(head.split(":", 1)[1])
    except ValueError:
        return None


