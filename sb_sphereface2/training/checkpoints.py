"""Crash-safe training checkpoints: SpeechBrain's ``Checkpointer`` with all-or-nothing
saves and a recovery that steps over damaged checkpoints.

``SafeCheckpointer`` keeps SpeechBrain's layout (``<save>/CKPT+<time>/`` with ``CKPT.yaml``
and one ``<name>.ckpt`` per recoverable), so ``find_checkpoints``, ``average_checkpoints``
and the model-folder export work unchanged. What it changes:

- Saving: a checkpoint is written into a temporary folder beside the others
  (``.CKPT+<time>.tmp<pid>/``), its files are fsync'ed and it is renamed into place, so a
  ``CKPT+`` folder is always complete. ``kill -9`` or a full disk during the save leaves
  only the temporary folder (removed by ``sb_sphereface2.files.remove_stale_temporaries``
  on the next run); a failed save raises ``CheckpointWriteError`` naming the folder and the
  operating system's cause, and the earlier checkpoints stay as they were. Torch states are
  serialised in memory and written with ``sb_sphereface2.files.atomic_write``, so a full
  disk reports its cause (torch's own file writer only says "unexpected pos").
- Deleting (``save_and_keep_only``): a checkpoint is renamed to a temporary name first, so
  a kill during the deletion leaves no incomplete ``CKPT+`` folder either.
- Recovery: checkpoints are tried newest first. One whose files do not read (truncated,
  empty or missing files, a damaged ``CKPT.yaml``: what a save interrupted by an older
  writer or a damaged disk leaves) is reported in one line and moved to ``<save>/broken/``
  (never deleted); recovery goes on with the next one. Before loading, the checkpoint
  must fit the run: module state shapes, and recoverables with a
  ``checkpoint_mismatch(path)`` method (``ClassLabels``); otherwise
  ``CheckpointMismatchError`` says what differs, and nothing is loaded.

``RandomStates`` and ``ClassLabels`` (:mod:`sb_sphereface2.training.run_state`) are the
recoverables that make a resumed run continue exactly and refuse another run's checkpoints.
"""

import io
import logging
import os
import pickle
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    DEFAULT_LOAD_HOOKS,
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    ckpt_recency,
    get_default_hook,
    hook_on_loading_state_dict_checkpoint,
    torch_recovery,
    torch_save,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process, main_process_only

from sb_sphereface2.errors import one_line
from sb_sphereface2.files import fsync_folder, temporary_path
from sb_sphereface2.training.run_state import save_torch_state

logger = logging.getLogger(__name__)

BROKEN_FOLDER = "broken"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format
# Errors of reading damaged files (a truncated zip, an unpickling error, a cut yaml file).
DAMAGE_ERRORS = (EOFError, KeyError, UnicodeDecodeError, pickle.UnpicklingError, yaml.YAMLError)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the earlier checkpoints are intact."""


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another run (other classes, another model)."""


def _cause(error):
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} [Errno {error.errno}]"
    return one_line(error)


def _fsync_tree(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    fsync_folder(folder)


class SafeCheckpointer(Checkpointer):
    """SpeechBrain's ``Checkpointer`` with atomic saves and a recovery that moves damaged
    checkpoints aside (see the module docstring). Same arguments.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> layer = torch.nn.Linear(2, 2)
    >>> checkpointer = SafeCheckpointer(folder, {"layer": layer})
    >>> first = checkpointer.save_checkpoint(meta={"epoch": 1})
    >>> second = checkpointer.save_checkpoint(meta={"epoch": 2})
    >>> sorted(p.name for p in Path(folder).iterdir()) == sorted([first.path.name, second.path.name])
    True
    >>> path = second.paramfiles["layer"]
    >>> _ = path.write_bytes(path.read_bytes()[:100])  # a save cut short by an older writer
    >>> checkpointer.recover_if_possible().meta["epoch"]
    1
    >>> [p.name for p in (Path(folder) / "broken").iterdir()] == [second.path.name]
    True
    """

    def __init__(self, checkpoints_dir, recoverables=None, custom_load_hooks=None, custom_save_hooks=None,
                 allow_partial_load=False):
        super().__init__(checkpoints_dir, None, custom_load_hooks, custom_save_hooks, allow_partial_load)
        if recoverables is not None:
            self.add_recoverables(recoverables)

    def add_recoverable(self, name, obj, custom_load_hook=None, custom_save_hook=None, optional_load=False):
        """As SpeechBrain's; objects saved with ``torch.save`` by default are saved with
        ``save_torch_state`` (serialised in memory, written atomically)."""
        if custom_save_hook is None and name not in self.custom_save_hooks:
            if get_default_hook(obj, DEFAULT_SAVE_HOOKS) is torch_save:
                custom_save_hook = main_process_only(save_torch_state)
        super().add_recoverable(name, obj, custom_load_hook, custom_save_hook, optional_load)

    def add_recoverables(self, recoverables):
        """As SpeechBrain's, through ``add_recoverable``."""
        if not isinstance(recoverables, Mapping):
            return super().add_recoverables(recoverables)  # its error
        for name, obj in recoverables.items():
            self.add_recoverable(name, obj)

    # --- saving --------------------------------------------------------------------

    def _new_checkpoint_dirpath(self):
        """``CKPT+<second>+<NN>`` with NN above every checkpoint of that second, so that the
        names sort in the order of saving. SpeechBrain takes the first free NN, which after
        a deletion in the same second gives a newer checkpoint a smaller name.

        Example
        -------
        >>> folder = getfixture("tmp_path")
        >>> checkpointer = SafeCheckpointer(folder, {"layer": torch.nn.Linear(2, 2)})
        >>> first, second = (checkpointer.save_checkpoint(meta={"n": n}) for n in (1, 2))
        >>> checkpointer.delete_checkpoints(num_to_keep=1)  # first goes
        >>> third = checkpointer.save_checkpoint(meta={"n": 3})
        >>> sorted(p.name for p in folder.iterdir()) == [second.path.name, third.path.name]
        True
        """
        stamp = time.strftime("%Y-%m-%d+%H-%M-%S", time.localtime(time.time()))
        taken = [int(name[-2:]) for name in os.listdir(self.checkpoints_dir)
                 if name.startswith(f"{CKPT_PREFIX}+{stamp}+") and name[-2:].isdigit()]
        return self.checkpoints_dir / f"{CKPT_PREFIX}+{stamp}+{max(taken, default=-1) + 1:02d}"

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Save a checkpoint all at once: into ``.CKPT+<name>.tmp<pid>/``, fsync'ed, renamed
        to ``CKPT+<name>/``. Raises ``CheckpointWriteError`` (one line: the folder and the
        cause) when it cannot be written; nothing of it is left then."""
        folder, final, staging = self.checkpoints_dir, None, None
        try:
            if if_main_process():
                final = self._custom_checkpoint_dirpath(name) if name is not None else self._new_checkpoint_dirpath()
                staging = Path(temporary_path(final))
                shutil.rmtree(staging, ignore_errors=True)
                os.makedirs(staging)
                self.checkpoints_dir = staging  # SpeechBrain's save writes <staging>/CKPT+<name>/
            written = super().save_checkpoint(
                meta, end_of_epoch, name=final.name[len(CKPT_PREFIX) + 1:] if final else None,
                verbosity=logging.DEBUG,
            )
            ddp_barrier()  # every process has written its files
            if if_main_process():
                _fsync_tree(staging / final.name)
                os.replace(staging / final.name, final)
                fsync_folder(folder)
        except Exception as error:
            raise CheckpointWriteError(
                f"cannot save a checkpoint in {folder}: {_cause(error)} (the earlier checkpoints are kept)"
            ) from error
        finally:
            self.checkpoints_dir = folder
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        if not if_main_process():
            return None
        logger.log(verbosity, "Saved a checkpoint in %s", final)
        paramfiles = {key: final / Path(path).name for key, path in written.paramfiles.items()}
        return Checkpoint(final, written.meta, paramfiles)

    def delete_checkpoints(self, *, num_to_keep=1, min_keys=None, max_keys=None, importance_keys=[ckpt_recency],
                           ckpt_predicate=None, verbosity=logging.INFO):
        """As SpeechBrain's (for each key, the ``num_to_keep`` most important checkpoints
        that pass ``ckpt_predicate`` are kept, the others deleted), but a checkpoint is
        renamed to a temporary name before it is removed: a kill during the deletion leaves
        no incomplete ``CKPT+`` folder."""
        if num_to_keep < 0:
            raise ValueError("Number of checkpoints to keep must be positive.")
        keys = [{"min_key": key} for key in min_keys or []] + [{"max_key": key} for key in max_keys or []]
        keys += [{"importance_key": key} for key in importance_keys]
        candidates, kept = set(), set()
        for key in keys:
            candidates.update(c.path for c in self.find_checkpoints(ckpt_predicate=ckpt_predicate, **key))
            kept.update(c.path for c in self.find_checkpoints(
                max_num_checkpoints=num_to_keep, ckpt_predicate=ckpt_predicate, **key))
        ddp_barrier()  # no process is saving meanwhile
        self._remove(sorted(candidates - kept), verbosity)
        ddp_barrier()

    @main_process_only
    def _remove(self, paths, verbosity):
        for path in paths:
            doomed = temporary_path(path, "old")
            os.replace(path, doomed)
            shutil.rmtree(doomed)
            logger.log(verbosity, "Deleted checkpoint in %s", path)

    # --- recovery ------------------------------------------------------------------

    def recover_if_possible(self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None):
        """Load the newest good checkpoint (``importance_key`` etc. as SpeechBrain's);
        damaged ones are moved to ``<save>/broken/`` with a one-line warning. Returns the
        checkpoint, or None when there is none. Raises ``CheckpointMismatchError`` when
        the newest good checkpoint does not fit the run."""
        while True:
            checkpoint = self.find_resumable(importance_key, max_key, min_key, ckpt_predicate)
            if checkpoint is None:
                logger.info("No checkpoint to resume from in %s", self.checkpoints_dir)
                return None
            for obj in self.recoverables.values():  # a failed attempt's place in the epoch
                if isinstance(obj, SaveableDataLoader):
                    obj._speechbrain_recovery_skip_to = None
            try:
                self.load_checkpoint(checkpoint)
                return checkpoint
            except DAMAGE_ERRORS as error:
                self._set_aside(checkpoint.path, f"does not load: {one_line(error)}")

    def find_resumable(self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None):
        """The checkpoint to resume from, without loading it: incomplete and damaged
        checkpoints are moved aside first. Raises ``CheckpointMismatchError`` when it does
        not fit the run; None when there is no checkpoint."""
        self._set_aside_incomplete()
        while True:
            checkpoint = self.find_checkpoint(importance_key, max_key, min_key, ckpt_predicate)
            if checkpoint is None:
                return None
            kind, message = self._inspect(checkpoint)
            if kind is None:
                return checkpoint
            if kind == "mismatch":
                raise CheckpointMismatchError(f"{checkpoint.path} does not fit this run: {message}")
            self._set_aside(checkpoint.path, message)

    def _required_names(self):
        return [
            name for name in self.recoverables
            if not self.optional_recoverables.get(name) and not name.startswith("dataloader")
        ]

    @main_process_only
    def _set_aside_incomplete(self):
        if not self.checkpoints_dir.is_dir():
            return
        for path in sorted(self.checkpoints_dir.iterdir()):
            if not (path.is_dir() and path.name.startswith(CKPT_PREFIX + "+")):
                continue
            problem = None
            try:
                with open(path / METAFNAME, encoding="utf-8") as handle:
                    meta = yaml.safe_load(handle)
                if not (isinstance(meta, dict) and {"unixtime", "end-of-epoch"} <= set(meta)):
                    problem = f"{METAFNAME} is damaged"
            except FileNotFoundError:
                problem = f"has no {METAFNAME} (an unfinished save or deletion)"
            except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
                problem = f"{METAFNAME} does not read: {one_line(error)}"
            if problem is None and not self.allow_partial_load:
                missing = [n for n in self._required_names() if not (path / f"{n}{PARAMFILE_EXT}").is_file()]
                if missing:
                    problem = f"has no {missing[0]}{PARAMFILE_EXT}"
            if problem is not None:
                self._move_aside(path, problem)

    @main_process_only
    def _inspect(self, checkpoint):
        """(None, None) for a good checkpoint, ("damaged", why) or ("mismatch", what)."""
        states = {}
        for name, path in sorted(checkpoint.paramfiles.items()):
            try:
                data = path.read_bytes()
            except OSError as error:
                return "damaged", f"{path.name} does not read: {_cause(error)}"
            if not data:
                return "damaged", f"{path.name} is empty"
            problem, state = _read_state(data)
            if problem:
                return "damaged", f"{path.name} {problem}"
            states[name] = state
        for name, obj in self.recoverables.items():  # own checks (the classes) say more than a shape
            if name in states and hasattr(obj, "checkpoint_mismatch"):
                message = obj.checkpoint_mismatch(checkpoint.paramfiles[name])
                if message:
                    return "mismatch", message
        for name, obj in self.recoverables.items():
            if name in states and self._loads_torch_state(name, obj):
                message = _state_mismatch(name, obj, states[name])
                if message:
                    return "mismatch", message
        return None, None

    def _loads_torch_state(self, name, obj):
        return (
            isinstance(obj, torch.nn.Module)
            and name not in self.custom_load_hooks
            and get_default_hook(obj, DEFAULT_LOAD_HOOKS) is torch_recovery
        )

    def _set_aside(self, path, problem):
        self._move_aside(path, problem)
        ddp_barrier()

    @main_process_only
    def _move_aside(self, path, problem):
        broken = self.checkpoints_dir / BROKEN_FOLDER
        os.makedirs(broken, exist_ok=True)
        target, count = broken / path.name, 1
        while target.exists():
            target, count = broken / f"{path.name}.{count}", count + 1
        os.replace(path, target)
        logger.warning("checkpoint %s is damaged (%s): moved to %s; trying the one before", path, problem, target)


def _read_state(data):
    """(problem or None, the torch state or None) of a checkpoint file's bytes."""
    if data.startswith(ZIP_MAGIC):
        try:
            return None, torch.load(io.BytesIO(data), map_location="cpu")
        except pickle.UnpicklingError as error:
            if "weights only" in str(error).lower():
                return None, None  # readable, just not by weights-only loading: not ours to judge
            return f"does not load: {one_line(error)}", None
        except Exception as error:  # a truncated zip: RuntimeError, OSError(22), EOFError...
            return f"does not load: {one_line(error)}", None
    try:
        yaml.safe_load(data.decode("utf-8"))
        return None, None
    except (UnicodeDecodeError, yaml.YAMLError):
        pass
    try:  # torch's legacy (non-zip) format
        return None, torch.load(io.BytesIO(data), map_location="cpu")
    except Exception as error:
        return f"does not load: {one_line(error)}", None


def _state_mismatch(name, module, state):
    """What differs between a module and a saved state dict (names and shapes), or None."""
    if not isinstance(state, Mapping):
        return f"{name}.ckpt holds no state dict"
    state = hook_on_loading_state_dict_checkpoint(state)
    current = module.state_dict()
    missing = sorted(set(current) - set(state))
    if missing:
        return f"{name} has {missing[0]}, the checkpoint does not (another model?)"
    unexpected = sorted(set(state) - set(current))
    if unexpected:
        return f"the checkpoint's {name} has {unexpected[0]}, this run's does not (another model?)"
    for key, value in current.items():
        saved = state[key]
        if hasattr(saved, "shape") and tuple(saved.shape) != tuple(value.shape):
            return (
                f"{name}.{key} is {list(saved.shape)} in the checkpoint, {list(value.shape)} in this run "
                "(other classes or another model size)"
            )
    return None
