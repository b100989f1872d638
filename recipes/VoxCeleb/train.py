#!/usr/bin/env python3
"""Train a speaker-embedding model with SphereFace2 (or AAM), or fine-tune one with a large margin.

Stage 1 (training)::

    python recipes/VoxCeleb/train.py hparams/train.yaml --data_folder=/data/vox2_dev_wav \\
        --trial_lists="[/data/veri_test2.txt]" --musan_folder=/data/musan --rir_folder=/data/rirs

Stage 2 (large-margin fine-tuning from stage 1's model folder)::

    python recipes/VoxCeleb/train.py hparams/finetune.yaml --data_folder=/data/vox2_dev_wav \\
        --pretrained_model=results/resnet34_sphereface2_c/1986/model ...

Switch blocks with ``--model=ecapa_tdnn`` / ``--loss=aam`` (see hparams/train.yaml). Runs under
``torchrun --standalone --nproc_per_node=N`` (batch_size is per process: the global batch is
N x batch_size; add ``--distributed_backend=gloo`` on CPU) and ``--precision=bf16|fp16``.
``hparams/train_sharded.yaml`` splits the head's classes across the processes.
Interrupt it and run the same command again: it resumes from the last checkpoint.
At the end the last ``average_last`` epoch checkpoints are averaged into ``model_folder``,
a SpeechBrain pretrained-model folder.
"""

import functools
import logging
import os
import sys

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.checkpoints import average_checkpoints
from speechbrain.utils.distributed import if_main_process, run_on_main

from sb_sphereface2.data.augmentation import prepare_musan, write_augment_csv
from sb_sphereface2.data.prepare import prepare_voxceleb
from sb_sphereface2.data.dataio import load_label_encoder, read_speakers, training_dataset, utterance_dataset
from sb_sphereface2.scoring.embed import embed_dataset
from sb_sphereface2.scoring.metrics import compute_eer
from sb_sphereface2.pretrained.folder import check_model_folder, inference_hparams_yaml, write_model_folder
from sb_sphereface2.hparams import compose_hparams_yaml, load_recipe_hparams, peek_hparams
from sb_sphereface2.scoring.trial_scores import score_trials
from sb_sphereface2.data.trials import read_trials

logger = logging.getLogger(__name__)


class SpeakerBrain(sb.core.Brain):
    """Speaker-embedding training with a cosine head and a SphereFace2/AAM loss; per-batch
    margin and learning-rate schedules; validation EER on held-out speakers."""

    batches_per_epoch = 1

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.batches_per_epoch = len(loader)
        return loader

    def _wrap_distributed(self):
        """DDP-wrap the trainable modules, as Brain does, except that a sharded head (its
        rows differ between processes; it averages its own gradient) is left alone and
        SyncBatchNorm is used on GPUs only (it has no CPU kernels; gloo runs keep per-process
        batch statistics)."""
        if not self.distributed_launch:
            return super()._wrap_distributed()
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
            from sb_sphereface2.losses.sharded import load_optimizer_per_process, save_optimizer_per_process

            # Each process's optimizer state covers its own head rows: save one file per process.
            self.checkpointer.add_recoverable(
                "optimizer", self.optimizer,
                custom_save_hook=save_optimizer_per_process, custom_load_hook=load_optimizer_per_process,
            )

    def on_fit_batch_start(self, batch, should_step):
        epoch = self.hparams.epoch_counter.current
        index = self.step - 1  # Brain counts batches from 1
        self.hparams.margin_scheduler.step(self.hparams.compute_cost, epoch, index, self.batches_per_epoch)
        scheduler = self.hparams.lr_scheduler
        if hasattr(scheduler, "on_batch_end"):  # SpeechBrain's cyclic schedule
            return
        scheduler.step(self.optimizer, epoch, index, self.batches_per_epoch)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        scheduler = self.hparams.lr_scheduler
        if should_step and hasattr(scheduler, "on_batch_end"):
            scheduler.on_batch_end(self.optimizer)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            wavs, lens = self.hparams.wav_augment(wavs, lens)
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        embeddings = self.modules.embedding_model(feats, lens)
        return self.modules.classifier(embeddings)

    def compute_objectives(self, predictions, batch, stage):
        spkid, _ = batch.spk_id_encoded
        loss = self.modules.compute_cost(predictions, spkid)
        logits = self.hparams.compute_cost.training_logits(predictions.detach(), spkid)
        self.error_metrics.append(batch.id, logits, spkid)
        return loss

    def on_stage_start(self, stage, epoch=None):
        self.error_metrics = sb.utils.metric_stats.MetricStats(
            metric=functools.partial(sb.nnet.losses.classification_error, reduction="batch"), n_jobs=1
        )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            return
        stats = {"loss": stage_loss, "error": self.error_metrics.summarize("average")}
        meta = {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "margin": self.hparams.compute_cost.margin,
        }
        valid = {}
        if self.dev is not None:
            valid["EER"] = self.validation_eer()
        # The epoch is over: Brain resets its batch counter only after this hook, and the
        # counter is part of the checkpoint; a resumed run must start the next epoch at 0.
        self.step = 0
        self.checkpointer.save_and_keep_only(
            meta={"epoch": epoch, **valid},
            num_to_keep=self.hparams.average_last,
            ckpt_predicate=lambda c: "epoch" in c.meta,
        )
        # Logged after the checkpoint: an epoch in the log is an epoch a rerun resumes after.
        self.hparams.train_logger.log_stats(stats_meta=meta, train_stats=stats, valid_stats=valid or None)

    def validation_eer(self):
        """EER (%) on the held-out speakers' trial list, full utterances, cosine scoring."""
        dataset, trials = self.dev
        ids, emb = embed_dataset(
            dataset,
            self.modules.compute_features,
            self.modules.mean_var_norm,
            self.hparams.embedding_model,
            device=self.device,
            progress=False,
        )
        self.modules.train()
        scores = score_trials(ids, emb, trials)
        return 100.0 * compute_eer(scores, trials.labels)[0]

    def on_fit_start(self):
        super().on_fit_start()
        # After a resume, the restored margin is in force before the first batch.
        self.hparams.margin_scheduler.apply(self.hparams.compute_cost)


def prepare_data(settings):
    """Data preparation (main process only): CSVs, trial lists, augmentation CSVs."""
    folder = settings["data_prep_folder"]
    result = prepare_voxceleb(
        settings["data_folder"],
        folder,
        trial_lists=settings["trial_lists"] or (),
        dev_speakers=settings["dev_speakers"],
        dev_trials=settings["dev_trials"],
        speed_perturb=settings["speed_perturb"],
        sample_rate=settings["sample_rate"],
        seed=settings["seed"],
    )
    if settings["augment"]:
        prepare_musan(settings["musan_folder"], folder, sample_rate=settings["sample_rate"])
        write_augment_csv(settings["rir_folder"], os.path.join(folder, "rir.csv"), sample_rate=settings["sample_rate"])
    return result


def check_settings(settings):
    """One-line errors for bad combinations, before anything runs."""
    if settings["augment"] and not (settings["musan_folder"] and settings["rir_folder"]):
        raise ValueError(
            "augment is on but musan_folder or rir_folder is not set: give "
            "--musan_folder=... --rir_folder=..., or --augment=False"
        )
    for key in ("musan_folder", "rir_folder"):
        if settings["augment"] and not os.path.isdir(settings[key]):
            raise FileNotFoundError(f"{key} not found: {settings[key]}")
    if settings["crop_seconds"] <= 0:
        raise ValueError(f"crop_seconds must be > 0, got {settings['crop_seconds']}")
    pretrained = settings.get("pretrained_model")
    if pretrained:
        check_model_folder(pretrained)


def label_encoder_for(settings, train_csv):
    """The training label encoder: built from train.csv, or the pretrained model's when
    fine-tuning (its head keeps its classes)."""
    path = os.path.join(settings["data_prep_folder"], "label_encoder.txt")
    pretrained = settings.get("pretrained_model")
    if not pretrained:
        run_on_main(load_label_encoder, args=[train_csv, path])
        return load_label_encoder(train_csv, path), path
    path = os.path.join(pretrained, "label_encoder.txt")
    encoder = CategoricalEncoder()
    encoder.load(path)
    unknown = sorted(set(read_speakers(train_csv)) - set(encoder.lab2ind))
    if unknown:
        raise ValueError(
            f"{len(unknown)} training speakers are not classes of the pretrained model "
            f"{pretrained} (first: {unknown[0]}); fine-tune on the speakers it was trained on"
        )
    return encoder, path


def load_pretrained(hparams, folder):
    """Stage 2: load the embedding model, the head and the loss state of stage 1's model
    folder, strictly (one-line error naming a wrong or damaged file)."""
    from sb_sphereface2.pretrained.initialise import initialise_from_model_folder

    loaded = initialise_from_model_folder(hparams, folder)
    logger.info("initialised %s from %s", ", ".join(sorted(loaded)), folder)


def init_encoder(hparams, source):
    """Fine-tuning a pretrained speaker model on new speakers: load only its embedding model
    (strict), keep the new head (closed-form bias) built for the new classes."""
    from sb_sphereface2.pretrained.initialise import initialise_encoder_from

    path = initialise_encoder_from(
        hparams["embedding_model"], source, savedir=os.path.join(hparams["output_folder"], "init_encoder")
    )
    logger.info("embedding model initialised from %s", path)


def average_into_model_folder(brain, hparams, stage_file, overrides, num_classes, encoder_path):
    """Average the last epoch checkpoints and write the model folder (main process)."""
    from sb_sphereface2.pretrained.card import training_hparams_text

    checkpoints = brain.checkpointer.find_checkpoints(
        max_num_checkpoints=hparams["average_last"], ckpt_predicate=lambda c: "epoch" in c.meta
    )
    if not checkpoints:
        raise RuntimeError(f"no epoch checkpoint in {hparams['save_folder']} to average")
    states = {}
    for name in ("embedding_model", "classifier", "compute_cost"):
        module = hparams[name]  # (a sharded head's state_dict is a collective: not called here)
        if not list(module.parameters()) and not list(module.buffers()):
            continue
        states[name] = average_checkpoints(checkpoints, name)
    epochs = sorted(int(c.meta["epoch"]) for c in checkpoints)
    write_model_folder(
        hparams["model_folder"], inference_hparams_yaml(stage_file, overrides, num_classes=num_classes),
        states, encoder_path,
        extra_files={"train_hparams.yaml": training_hparams_text(stage_file, overrides, epochs)},
    )
    logger.info("averaged epochs %s into %s", epochs, hparams["model_folder"])


def main(argv):
    stage_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless started by torchrun
    settings = peek_hparams(stage_file, overrides)
    check_settings(settings)
    sb.create_experiment_directory(
        experiment_directory=settings["output_folder"],
        hyperparams_to_save=None,
        overrides=overrides,
    )
    prepared = {}
    run_on_main(lambda: prepared.update(prepare_data(settings)))
    if not prepared:  # other DDP processes: read what the main one wrote
        prepared = prepare_data(settings)
    # --train_csv replaces the prepared training list (e.g. noisy or pseudo labels).
    train_csv = settings.get("train_csv") or prepared["train_csv"]
    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"train_csv not found: {train_csv}")
    encoder, encoder_path = label_encoder_for(settings, train_csv)
    num_classes = len(encoder)

    hparams = load_recipe_hparams(stage_file, overrides, num_classes=num_classes)
    if settings.get("pretrained_model"):
        load_pretrained(hparams, settings["pretrained_model"])
    if settings.get("init_encoder_from"):
        init_encoder(hparams, settings["init_encoder_from"])

    train_set = training_dataset(
        train_csv,
        encoder,
        crop_seconds=hparams["crop_seconds"],
        sample_rate=hparams["sample_rate"],
        speed_perturbed=hparams["speed_perturb"],
    )
    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.dev = None
    if prepared.get("dev_csv"):
        brain.dev = (utterance_dataset(prepared["dev_csv"], hparams["sample_rate"]), read_trials(prepared["dev_trials"]))
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        train_loader_kwargs=hparams["dataloader_options"],
    )
    if if_main_process():
        average_into_model_folder(brain, hparams, stage_file, overrides, num_classes, encoder_path)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
