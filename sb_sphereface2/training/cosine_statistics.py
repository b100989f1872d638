"""The training log's raw-cosine statistics: classification error of the head's cosines
(argmax against the label, unaffected by the margin) and the mean cosine with the own
class and with the other classes, summed over a batch; for a plain head and for a head
whose classes are split over the DDP processes.
"""

import torch


def raw_cosine_statistics(cosines, labels):
    """Sums over a batch of the raw-cosine training statistics: [errors, own-class cosine,
    mean other-class cosine, samples]. An error is an argmax of the cosines that is not the
    label: the margin does not move it.

    Arguments
    ---------
    cosines : torch.Tensor
        Head outputs [B, 1, C] or [B, C].
    labels : torch.Tensor
        Labels [B, 1] or [B].

    Returns
    -------
    torch.Tensor
        float [4].

    Example
    -------
    >>> cos = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.5, 0.1]])
    >>> [round(x, 4) for x in raw_cosine_statistics(cos, torch.tensor([0, 0])).tolist()]
    [1.0, 1.2, 0.25, 2.0]
    """
    cos = cosines.detach().reshape(cosines.shape[0], -1).float()
    labels = labels.reshape(-1).long()
    own = cos.gather(1, labels[:, None]).squeeze(1)
    others = (cos.sum(dim=1) - own) / max(1, cos.shape[1] - 1)
    errors = (cos.argmax(dim=1) != labels).sum().float()
    return torch.stack([errors, own.sum(), others.sum(), torch.tensor(float(len(labels)), device=cos.device)])


def sharded_raw_cosine_statistics(cosines, labels, start, num_classes):
    """``raw_cosine_statistics`` of this process's samples when the head's classes are split
    over the DDP processes: ``cosines`` [N * B, 1, C_local] are the whole batch's cosines
    with this process's classes from ``start``; ``labels`` [B] are this process's."""
    from sb_sphereface2.distributed import all_gather_rows, world_and_rank

    _, rank = world_and_rank()
    cos = cosines.detach().reshape(cosines.shape[0], -1).float()
    labels = labels.reshape(-1).long()
    every = all_gather_rows(labels)                     # [N * B], process order
    local = every - start
    here = (local >= 0) & (local < cos.shape[1])
    own = torch.where(here, cos.gather(1, local.clamp(0, cos.shape[1] - 1)[:, None]).squeeze(1), 0.0)
    parts = torch.stack([own, cos.sum(dim=1), cos.max(dim=1).values])  # [3, N * B]
    gathered = all_gather_rows(parts.unsqueeze(0))      # [N, 3, N * B]
    own, sums = gathered[:, 0].sum(0), gathered[:, 1].sum(0)
    best = gathered[:, 2].max(0).values
    rows = slice(rank * len(labels), (rank + 1) * len(labels))
    own, sums, best = own[rows], sums[rows], best[rows]
    others = (sums - own) / max(1, num_classes - 1)
    errors = (own < best).sum().float()
    return torch.stack([errors, own.sum(), others.sum(), torch.tensor(float(len(labels)), device=cos.device)])
