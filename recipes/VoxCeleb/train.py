#!/usr/bin/env python3
"""Train a speaker-embedding model with SphereFace2 (or AAM), or fine-tune one with a large margin.

Stage 1 (training)::

    python recipes/VoxCeleb/train.py hparams/train.yaml --data_folder=/data/vox2_dev_wav \\
        --trial_lists="[/data/veri_test2.txt]" --musan_folder=/data/musan --rir_folder=/data/rirs

Stage 2 (large-margin fine-tuning from stage 1's model folder)::

    python recipes/VoxCeleb/train.py hparams/finetune.yaml --data_folder=/data/vox2_dev_wav \\
        --pretrained_model=results/resnet34_sphereface2_c/1986/model ...

Switch blocks with ``--model=ecapa_tdnn`` / ``--loss=aam`` (see hparams/train.yaml). Runs under
``torchrun --standalone --nproc_per_node=N`` (``batch_size`` is the total batch: each process
loads batch_size / N; add ``--distributed_backend=gloo`` on CPU) and ``--precision=bf16|fp16``.
``hparams/train_sharded.yaml`` splits the head's classes across the processes.
The run folder keeps the composed ``hyperparams.yaml`` it ran with. Interrupt it (even with
``kill -9``) and run the same command again: it resumes from the newest good checkpoint
(epoch checkpoints, and mid-epoch ones every ``ckpt_interval_minutes``) with the
schedules and random draws of an uninterrupted run. At the end the last ``average_last``
epoch checkpoints are averaged into ``model_folder``, a SpeechBrain pretrained-model folder.

Failures end in one line on stderr (``error: ...``) naming the key, file or folder: exit
code 2 when the command must change (an unknown or invalid hyperparameter, checked before
any work; an output folder holding another run's checkpoints), 1 otherwise (bad data, a
read-only or full disk). docs/reliability.md lists the faults and what happens.
"""

import logging
import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.checkpoints import average_checkpoints
from speechbrain.utils.distributed import if_main_process, run_on_main

from sb_sphereface2.data.augmentation import prepare_musan, write_augment_csv
from sb_sphereface2.data.dataio import training_dataset, utterance_dataset
from sb_sphereface2.data.prepare import prepare_voxceleb
from sb_sphereface2.data.shard_writer import pack_shards
from sb_sphereface2.data.shards import shard_loader
from sb_sphereface2.data.speakers import check_classes, label_encoder, read_speakers
from sb_sphereface2.data.speed import speed_labels, training_speeds
from sb_sphereface2.data.trials import read_trials
from sb_sphereface2.files import remove_stale_temporaries, write_text_atomic
from sb_sphereface2.hparams import HparamsError, compose_hparams_yaml, parse_overrides
from sb_sphereface2.pretrained.initialise import initialise_from_model_folder
from sb_sphereface2.pretrained.folder import check_model_folder, inference_hparams_yaml, write_model_folder
from sb_sphereface2.training.brain import SpeakerBrain
from sb_sphereface2.training.checkpoints import CheckpointMismatchError, CheckpointWriteError
from sb_sphereface2.errors import check_writable, fail, os_error_line
from sb_sphereface2.training.run_state import ClassLabels
from sb_sphereface2.training.settings import checked_settings

logger = logging.getLogger(__name__)


def prepare_data(settings):
    """Data preparation (main process only): audio check, segments, CSVs, trial lists,
    augmentation CSVs."""
    folder = settings["data_prep_folder"]
    result = prepare_voxceleb(
        settings["data_folder"],
        folder,
        trial_lists=settings["trial_lists"] or (),
        dev_speakers=settings["dev_speakers"],
        dev_trials=settings["dev_trials"],
        test_speakers=settings["test_speakers"],
        test_trials=settings["test_trials"],
        segmentation=settings["segmentation"],
        segment_seconds=settings["segment_seconds"],
        sample_rate=settings["sample_rate"],
        min_seconds=settings["min_audio_seconds"],
        drop_bad_audio=settings["drop_bad_audio"],
        num_workers=settings["prep_workers"],
        seed=settings["split_seed"],
    )
    if settings["augment"]:
        prepare_musan(settings["musan_folder"], folder, sample_rate=settings["sample_rate"])
        write_augment_csv(settings["rir_folder"], os.path.join(folder, "rir.csv"), sample_rate=settings["sample_rate"])
    return result


def check_settings(settings):
    """One-line errors for bad combinations, before anything runs (types and ranges of
    single keys: ``checked_settings``)."""
    if not settings.get("data_folder"):
        raise ValueError("data_folder is required: give --data_folder=<folder of <speaker>/<session>/<utt>.wav>")
    if "pretrained_model" in settings and not settings["pretrained_model"]:
        raise ValueError("this stage fine-tunes a model: give --pretrained_model=<stage 1 model folder>")
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


def remove_leftovers(settings):
    """Remove what killed runs left in the run folder: temporary files and folders of dead
    processes (``.model.tmp<pid>/``, a checkpoint cut short ``save/.CKPT+<time>.tmp<pid>/``,
    ``data/.train.csv.tmp<pid>``). Main process only."""
    folders = {settings["output_folder"], settings["save_folder"], settings["data_prep_folder"],
               os.path.dirname(os.path.abspath(settings["model_folder"]))}
    for folder in sorted(folders):
        removed = remove_stale_temporaries(folder)
        if removed:
            logger.info("removed what killed runs left in %s: %s", folder, ", ".join(removed))


def per_process_batch(total, world_size):
    """``batch_size`` is the total batch over all processes: each loads total / world_size."""
    if total % world_size:
        raise ValueError(f"batch_size {total} (the total batch) is not divisible by {world_size} processes")
    return total // world_size


def label_encoder_for(settings, train_csv):
    """The training label encoder: speakers x speeds (speed-specific classes), built from
    train.csv, or the pretrained model's when fine-tuning (its head keeps its classes).

    The prepared list's encoder lives in the data preparation folder; the encoder of
    another list (``--train_csv``: noisy or pseudo labels) lives in the run's own output
    folder, so that runs on different lists can share one preparation folder, even at
    the same time."""
    labels = speed_labels(read_speakers(train_csv), training_speeds(settings["speed_perturb"]))
    pretrained = settings.get("pretrained_model")
    if not pretrained:
        folder = settings["output_folder"] if settings.get("train_csv") else settings["data_prep_folder"]
        path = os.path.join(folder, "label_encoder.txt")
        return label_encoder(labels, path), path
    path = os.path.join(pretrained, "label_encoder.txt")
    encoder = CategoricalEncoder()
    encoder.load(path)
    check_classes(encoder, labels, f"the pretrained model {pretrained}")
    return encoder, path


def training_input(hparams, train_csv, encoder, batch_size, pin_memory=False):
    """The training data as ``(train_set, loader_kwargs)``: the CSV's utterances
    (``data_source: csv``) or tar shards packed from it (``data_source: shards``);
    ``batch_size`` per process; ``pin_memory`` for the shard loader (training on a GPU;
    ``SpeakerBrain`` sets it for the CSV path's loader)."""
    common = dict(
        crop_seconds=hparams["crop_seconds"],
        sample_rate=hparams["sample_rate"],
        speeds=training_speeds(hparams["speed_perturb"]),
        seed=hparams["seed"],
        epoch_source=hparams["epoch_counter"],
    )
    source = hparams.get("data_source", "csv")
    if source == "csv":
        return training_dataset(train_csv, encoder, **common), {**hparams["dataloader_options"], "batch_size": batch_size}
    if source != "shards":
        raise ValueError(f"data_source must be csv or shards, got {source!r}")
    folder = hparams["shard_folder"]
    run_on_main(
        pack_shards, args=[train_csv, folder],
        kwargs={"utterances_per_shard": hparams["utterances_per_shard"], "sample_rate": hparams["sample_rate"],
                "seed": hparams["seed"]},
    )
    options = {"pin_memory": pin_memory, **{k: v for k, v in hparams["dataloader_options"].items() if k != "batch_size"}}
    loader = shard_loader(
        folder, encoder, batch_size, num_workers=options.pop("num_workers", 0),
        shuffle_buffer=hparams["shuffle_buffer"], **common, **options,
    )
    hparams["checkpointer"].add_recoverable("shard_loader", loader)  # its place in an epoch
    return loader, {}


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
        averaged = average_checkpoints(checkpoints, name)
        # Batch-norm's step counters stay integers (averaging makes them float).
        states[name] = {key: value.round().long() if key.endswith("num_batches_tracked") else value
                        for key, value in averaged.items()}
    epochs = sorted(int(c.meta["epoch"]) for c in checkpoints)
    write_model_folder(
        hparams["model_folder"], inference_hparams_yaml(stage_file, overrides, num_classes=num_classes),
        states, encoder_path,
        extra_files={"train_hparams.yaml": training_hparams_text(stage_file, overrides, epochs, num_classes)},
    )
    logger.info("averaged epochs %s into %s", epochs, hparams["model_folder"])


def main(argv):
    stage_file, run_opts, overrides = sb.parse_arguments(argv)
    overrides = parse_overrides(overrides)
    # Keys, types and ranges first: one line and exit code 2 before any work.
    settings = checked_settings(stage_file, overrides)
    check_settings(settings)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless started by torchrun
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    per_process = per_process_batch(settings["batch_size"], world_size)
    run_on_main(check_writable, args=[settings["output_folder"]])
    sb.create_experiment_directory(experiment_directory=settings["output_folder"])
    run_on_main(remove_leftovers, args=[settings])

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

    # The composed hyperparameters, overrides and the number of classes written in: the run
    # folder keeps them, and plain hyperpyyaml loads them.
    composed = compose_hparams_yaml(stage_file, {**overrides, "num_classes": num_classes})
    hparams = load_hyperpyyaml(composed)
    # The checkpoints keep the classes they were trained on. Before the run folder's
    # hyperparams.yaml is replaced: its checkpoints must be this run's (damaged ones are
    # moved aside here).
    checkpointer = hparams["checkpointer"]
    checkpointer.add_recoverable("classes", ClassLabels.of_encoder(encoder), optional_load=True)
    if hasattr(checkpointer, "find_resumable"):
        checkpointer.find_resumable()
    if if_main_process():
        write_text_atomic(os.path.join(settings["output_folder"], "hyperparams.yaml"), composed)
    if settings.get("pretrained_model"):
        loaded = initialise_from_model_folder(hparams, settings["pretrained_model"])  # strict
        logger.info("initialised %s from %s", ", ".join(sorted(loaded)), settings["pretrained_model"])
    if settings.get("init_encoder_from"):
        init_encoder(hparams, settings["init_encoder_from"])

    on_gpu = str(run_opts.get("device", "cpu")).startswith("cuda")
    train_set, train_loader_kwargs = training_input(hparams, train_csv, encoder, per_process, pin_memory=on_gpu)
    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    meaningful = prepared.get("summary", {}).get("dev", {}).get("meaningful", True)
    if prepared.get("dev_csv") and meaningful:
        valid_set = utterance_dataset(prepared["dev_csv"], hparams["sample_rate"])
        brain.dev_trials = read_trials(prepared["dev_trials"])
    else:
        logger.info("validation is off: %s", "too few held-out speakers and trials for a meaningful EER "
                    "(at least 20 speakers or 1,000 trials)" if prepared.get("dev_csv") else
                    f"no held-out speakers (dev_speakers={settings['dev_speakers']})")
        valid_set = []  # the (empty) validation stage still saves the epoch checkpoint
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs=train_loader_kwargs,
        valid_loader_kwargs={"batch_size": 1},
    )
    if if_main_process():
        average_into_model_folder(brain, hparams, stage_file, overrides, num_classes, encoder_path)


def run(argv):
    """``main`` with every expected failure as one line on stderr; returns the exit code:
    2 when the command must change (hyperparameters, an output folder of another run),
    1 for bad input and operating-system errors."""
    logging.raiseExceptions = False  # a log file on a full disk: no traceback per record
    try:
        main(argv)
        return 0
    except HparamsError as error:
        return fail(error, 2)
    except CheckpointMismatchError as error:
        return fail(
            f"{error}; start a new run with another --output_folder, or resume this one with the "
            "data and settings it was trained with", 2,
        )
    except (ValueError, FileNotFoundError, CheckpointWriteError) as error:  # bad input
        return fail(error, 1)
    except OSError as error:  # a read-only or full disk
        return fail(os_error_line(error), 1)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
