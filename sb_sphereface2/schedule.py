"""Print the learning-rate and margin schedule a stage file will produce, without training.

::

    python -m sb_sphereface2.schedule hparams/train.yaml --utterances 1092009 --world_size 4

prints one line per epoch: the epoch, its iterations, and the learning rate and margin at
its first iteration, so the schedule can be compared with the paper before spending GPU
days. Any hparams override is accepted (``--batch_size=128``, ``--loss=aam``...).
An epoch reads every training utterance once: with ``batch_size`` the total batch over
``world_size`` processes (each loads batch_size / world_size) and incomplete batches
dropped, it has (utterances // world_size) // (batch_size // world_size) iterations,
wespeaker's ``loader_size``.
"""

import argparse
import sys

from sb_sphereface2.hparams import load_recipe_hparams, parse_overrides
from sb_sphereface2.errors import fail


def iterations_per_epoch(utterances, total_batch, world_size=1):
    """Iterations of an epoch that reads each of ``utterances`` once, incomplete batches
    dropped, the total batch split over ``world_size`` processes (as DistributedSampler
    with drop_last and wespeaker's loader_size count them).

    Example
    -------
    >>> iterations_per_epoch(1092009, 256, world_size=4), iterations_per_epoch(1092009, 256)
    (4265, 4265)
    """
    if total_batch % world_size:
        raise ValueError(f"batch_size {total_batch} (the total batch) is not divisible by {world_size} processes")
    per_process = total_batch // world_size
    iterations = (utterances // world_size) // per_process
    if iterations < 1:
        raise ValueError(f"{utterances} utterances make no complete batch of {total_batch}")
    return iterations


def schedule_rows(hparams, utterances, world_size=1):
    """``(epoch, iterations, lr, margin)`` per epoch, lr and margin at its first iteration.

    Arguments
    ---------
    hparams : dict
        Loaded hyperparameters with ``lr_scheduler``, ``margin_scheduler``,
        ``number_of_epochs`` and ``batch_size``.
    utterances : int
        Training utterances read per epoch.
    world_size : int
        Number of DDP processes.

    Returns
    -------
    list of tuple
    """
    per_epoch = iterations_per_epoch(utterances, hparams["batch_size"], world_size)
    lr, margin = hparams["lr_scheduler"], hparams["margin_scheduler"]
    rows = []
    for epoch in range(1, int(hparams["number_of_epochs"]) + 1):
        first = (epoch - 1) * per_epoch
        rate = lr(first, per_epoch) if not hasattr(lr, "on_batch_end") else float("nan")
        rows.append((epoch, per_epoch, rate, margin(first, per_epoch)))
    return rows


def main(argv=None):
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m sb_sphereface2.schedule",
        description="Print the lr and margin at the first iteration of every epoch.",
    )
    parser.add_argument("stage", help="stage file, e.g. hparams/train.yaml")
    parser.add_argument("--utterances", type=int, required=True, help="training utterances per epoch")
    parser.add_argument("--world_size", type=int, default=1, help="number of DDP processes")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"overrides are --key=value, got {item!r}")
        key, value = item[2:].split("=", 1)
        overrides.update(parse_overrides(f"{key}: {value}"))
    try:
        overrides.setdefault("data_folder", "unused")
        hparams = load_recipe_hparams(args.stage, overrides)
        rows = schedule_rows(hparams, args.utterances, args.world_size)
    except (ValueError, FileNotFoundError) as error:
        return fail(error, 2)
    print(f"# {args.stage}: {args.utterances} utterances, total batch {hparams['batch_size']} over "
          f"{args.world_size} process(es), {rows[0][1]} iterations per epoch")
    print(f"{'epoch':>5} {'iterations':>10} {'lr':>12} {'margin':>8}")
    for epoch, iterations, lr, margin in rows:
        print(f"{epoch:>5} {iterations:>10} {lr:>12.6g} {margin:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
