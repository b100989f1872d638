"""What every loss on the cosines of a cosine head shares: the SpeechBrain input checks
and the margin as a run-time setting that starts where the margin schedule starts."""

import math

import torch


def as_cosines(outputs, rows, columns, where=""):
    """Cosines [rows, 1, columns] or [rows, columns] as [rows, columns]; half precision
    promoted to float32, float64 kept. ``rows`` None accepts any batch size.

    Example
    -------
    >>> as_cosines(torch.zeros(4, 1, 3, dtype=torch.float16), None, 3).dtype
    torch.float32
    """
    if outputs.dim() == 3 and outputs.shape[1] == 1:
        outputs = outputs.squeeze(1)
    if outputs.dim() != 2 or outputs.shape[1] != columns or (rows is not None and outputs.shape[0] != rows):
        shown = "B" if rows is None else str(rows)
        raise ValueError(
            f"expected cosines of shape [{shown}, 1, {columns}] or [{shown}, {columns}]{where}, "
            f"got {tuple(outputs.shape)}"
        )
    return outputs if outputs.dtype == torch.float64 else outputs.float()


def as_labels(targets, rows=None):
    """Integer labels [rows, 1] or [rows] as [rows] long (``rows`` None: any number).

    Example
    -------
    >>> as_labels(torch.tensor([[0], [2]]), 2).tolist()
    [0, 2]
    """
    if targets.dim() == 2 and targets.shape[1] == 1:
        targets = targets.squeeze(1)
    if targets.dim() != 1 or (rows is not None and targets.shape[0] != rows):
        shown = "B" if rows is None else str(rows)
        raise ValueError(f"expected labels of shape [{shown}] or [{shown}, 1], got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point:
        raise ValueError(f"labels must be integers, got dtype {targets.dtype}")
    return targets.long()


def check_values(cos, labels, num_classes):
    """Finite cosines and labels in [0, num_classes), with one host synchronisation.

    Example
    -------
    >>> check_values(torch.zeros(2, 3), torch.tensor([0, 3]), 3)
    Traceback (most recent call last):
    ...
    ValueError: labels must be in [0, 2], found 3
    """
    # The sum is finite unless an element is not (or finite ones overflow it: then the
    # exact check below finds none bad); a sum costs a tenth of isfinite's passes.
    low, high, total = torch.stack([labels.min().double(), labels.max().double(), cos.sum().double()]).tolist()
    if not math.isfinite(total):
        bad = cos[~torch.isfinite(cos)]
        if bad.numel():
            raise ValueError(f"cosines must be finite, found {bad[0].item()}")
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], found {int(low if low < 0 else high)}")


def flatten_outputs(outputs, targets, num_classes):
    """Validate SpeechBrain-shaped cosines and labels; return [B, C] float32 and [B] long.

    Accepts outputs [B, 1, C] (SpeechBrain's ECAPA ``Classifier``) or [B, C], and
    targets [B, 1] or [B]. Half-precision cosines are promoted to float32; float64
    stays float64.

    Example
    -------
    >>> cos, y = flatten_outputs(torch.zeros(4, 1, 3), torch.tensor([[0], [1], [2], [0]]), 3)
    >>> cos.shape, y.tolist()
    (torch.Size([4, 3]), [0, 1, 2, 0])
    """
    cos = as_cosines(outputs, None, num_classes)
    labels = as_labels(targets, cos.shape[0])
    check_values(cos, labels, num_classes)
    return cos, labels


def finite_number(name, value):
    """``value`` as a finite float; a ValueError naming ``name`` otherwise.

    Example
    -------
    >>> finite_number("margin", "0.2")
    0.2
    >>> finite_number("scale", True)
    Traceback (most recent call last):
    ...
    ValueError: scale must be a number, got True
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def finite_margin(value):
    """The margin rule every loss shares: a finite number (as a float)."""
    return finite_number("margin", value)


class CosineMarginLoss(torch.nn.Module):
    """Base of the losses on the cosines of a cosine head (``SphereFace2Loss``,
    ``AAMLoss``): the number of classes, the scale and a margin settable at run time
    (``MarginScheduler`` sets ``loss.margin``), validated by the loss's one rule,
    ``check_margin``.

    Given the ``margin_scheduler`` that will move it, the margin at the start is the
    schedule's value at iteration 0 (what the loss is initialised for), and every margin
    the schedule can reach is checked here, when the loss is built.

    Arguments
    ---------
    num_classes : int
        Number of classes C (>= 2).
    scale : float
        Scale s (> 0).
    margin : float
        The margin at the start when there is no ``margin_scheduler``.
    margin_scheduler : MarginScheduler, optional
        The margin schedule of the run.

    Example
    -------
    >>> loss = CosineMarginLoss(3, scale=10.0, margin=0.2)
    >>> loss.margin = 0.3
    >>> loss.margin
    0.3
    """

    def __init__(self, num_classes, scale, margin=0.2, margin_scheduler=None):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.num_classes = num_classes
        self.scale = float(scale)
        if margin_scheduler is not None:
            for name in ("initial_margin", "final_margin"):
                try:
                    self.check_margin(getattr(margin_scheduler, name))
                except ValueError as error:
                    raise ValueError(f"margin_scheduler.{name}: {error}") from None
            margin = margin_scheduler(0, iterations_per_epoch=1)
        self.margin = margin

    @classmethod
    def margin_rule(cls, settings=None):
        """The function that checks a margin of this loss class (given the loss's settings
        object where it has one) and returns it as a float: the loss's one margin rule,
        which the recipe's settings check also asks."""
        return finite_margin

    def check_margin(self, value):
        """The margin as a float; ValueError if it is not valid for this loss."""
        return self.margin_rule(getattr(self, "settings", None))(value)

    @property
    def margin(self):
        """The margin in force (float)."""
        return self._margin

    @margin.setter
    def margin(self, value):
        self._margin = self.check_margin(value)
