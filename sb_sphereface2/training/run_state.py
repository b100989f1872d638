"""What a checkpoint needs besides the model so that a resumed run continues exactly,
and refuses to continue another run.

- ``RandomStates``: the random generators of a process (torch's CPU and CUDA generators,
  numpy's global one, Python's ``random``), saved with every checkpoint and restored on
  resume, so random draws after a resume are the draws of an uninterrupted run.
- ``ClassLabels``: the classes of the run's head (the label encoder's labels in index
  order); a checkpoint saved with other classes is refused before anything is loaded.
- ``save_process_state`` / ``load_process_state``: one file per process (``path`` for the
  main process, ``path.rank<r>`` for process r), for state that differs between DDP
  processes.
- ``save_torch_state``: a module's or optimizer's state serialised in memory, then written
  atomically, so that a failed write is an ``OSError`` with its cause.
"""

import io
import os
import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sb_sphereface2.distributed import world_and_rank
from sb_sphereface2.files import atomic_write, write_text_atomic


def process_path(path, rank=None):
    """This process's file for per-process state: ``path`` (main process) or ``path.rank<r>``.

    Example
    -------
    >>> process_path("save/CKPT+1/random_states.ckpt"), process_path("a.ckpt", rank=2)
    ('save/CKPT+1/random_states.ckpt', 'a.ckpt.rank2')
    """
    rank = world_and_rank()[1] if rank is None else rank
    return str(path) if rank == 0 else f"{path}.rank{rank}"


def write_torch(obj, path):
    """``torch.save`` ``obj`` into memory, then write the bytes atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getbuffer())


def save_torch_state(obj, path):
    """Checkpointer save hook: ``obj.state_dict()`` written with ``write_torch``."""
    write_torch(obj.state_dict(), path)


def save_process_state(state, path):
    """Write this process's ``state`` (tensors, numbers, lists, dicts) to its own file."""
    write_torch(state, process_path(path))


def load_process_state(path):
    """This process's state saved by ``save_process_state``, or None when it has no file
    (a checkpoint saved with fewer processes).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "s.ckpt")
    >>> save_process_state({"step": 3}, path)
    >>> load_process_state(path)
    {'step': 3}
    """
    own = process_path(path)
    if not os.path.isfile(own):
        return None
    return torch.load(own, map_location="cpu")


class RandomStates:
    """The random generators of this process as a checkpoint recoverable (saved by every
    process in its own file; see ``process_path``).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "random_states.ckpt")
    >>> states = RandomStates()
    >>> states.save(path)
    >>> before = (torch.rand(2), np.random.rand(), random.random())
    >>> states.load(path)
    >>> after = (torch.rand(2), np.random.rand(), random.random())
    >>> bool((before[0] == after[0]).all()) and before[1:] == after[1:]
    True
    """

    @staticmethod
    def state():
        """The generators' states as tensors, numbers and tuples (loadable weights-only)."""
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }

    @staticmethod
    def restore(state):
        """Set the generators to ``state`` (from ``state()``)."""
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))

    @mark_as_saver
    def save(self, path):
        save_process_state(self.state(), path)

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        """Restore this process's states (kept as they are when it has no file)."""
        state = load_process_state(path)
        if state is not None:
            self.restore(state)


register_checkpoint_hooks(RandomStates, save_on_main_only=False)


@register_checkpoint_hooks
class ClassLabels:
    """The classes of a run's head as a checkpoint recoverable: ``checkpoint_mismatch``
    tells what differs from a checkpoint's classes; loading a checkpoint of other classes
    raises ValueError.

    Arguments
    ---------
    labels : sequence of str
        The class labels in index order (``[encoder.ind2lab[i] for i in range(len(encoder))]``).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "classes.ckpt")
    >>> ClassLabels(["a", "b"]).save(path)
    >>> ClassLabels(["a", "b", "c"]).checkpoint_mismatch(path)
    'the checkpoint has 2 classes, this run 3 (this run also has c)'
    """

    def __init__(self, labels):
        self.labels = [str(label) for label in labels]

    @classmethod
    def of_encoder(cls, encoder):
        """The labels of a SpeechBrain ``CategoricalEncoder``, in index order."""
        return cls([encoder.ind2lab[index] for index in range(len(encoder))])

    def checkpoint_mismatch(self, path):
        """None when ``path`` holds these labels, else one line saying what differs."""
        with open(path, encoding="utf-8") as handle:
            saved = handle.read().splitlines()
        if saved == self.labels:
            return None
        only_here = sorted(set(self.labels) - set(saved))
        only_there = sorted(set(saved) - set(self.labels))
        detail = (
            f"this run also has {only_here[0]}" if only_here
            else f"the checkpoint also has {only_there[0]}" if only_there
            else "the same labels in another order"
        )
        return f"the checkpoint has {len(saved)} classes, this run {len(self.labels)} ({detail})"

    @mark_as_saver
    def save(self, path):
        write_text_atomic(path, "".join(f"{label}\n" for label in self.labels))

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        mismatch = self.checkpoint_mismatch(path)
        if mismatch:
            raise ValueError(f"{path}: {mismatch}")
