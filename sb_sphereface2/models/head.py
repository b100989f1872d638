"""The SphereFace2 classifier head: cosines between embeddings and class weights."""

import torch
import torch.nn.functional as F


def flatten_embeddings(x, dim):
    """Embeddings [B, D] from [B, D] or [B, 1, D] (ECAPA and ResNet lobes); ValueError otherwise.

    Example
    -------
    >>> flatten_embeddings(torch.zeros(4, 1, 8), 8).shape
    torch.Size([4, 8])
    """
    if x.dim() == 3 and x.shape[1] == 1:
        x = x.squeeze(1)
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"expected embeddings [B, {dim}] or [B, 1, {dim}], got {tuple(x.shape)}")
    return x


class SphereFace2Head(torch.nn.Module):
    """Cosine classifier head for SphereFace2 (and any cosine-margin loss).

    Returns the cosine between the L2-normalised embedding and each L2-normalised
    class weight, shaped [B, 1, C] like SpeechBrain's ECAPA ``Classifier``, so either
    replaces the other in a yaml. Its single parameter ``weight`` [C, D] has the same
    name and shape as that ``Classifier``'s (with ``lin_blocks=0``), so checkpoints
    load across the two.

    Arguments
    ---------
    input_size : int
        Embedding dimension D.
    out_neurons : int
        Number of classes C.

    Returns
    -------
    torch.Tensor
        From ``forward``: cosines [B, 1, C].

    Example
    -------
    >>> head = SphereFace2Head(input_size=192, out_neurons=10)
    >>> head(torch.randn(4, 1, 192)).shape
    torch.Size([4, 1, 10])
    >>> head(torch.randn(4, 192)).shape
    torch.Size([4, 1, 10])
    """

    def __init__(self, input_size, out_neurons):
        super().__init__()
        if int(input_size) < 1 or int(out_neurons) < 2:
            raise ValueError(
                f"need input_size >= 1 and out_neurons >= 2, got {input_size} and {out_neurons}"
            )
        self.weight = torch.nn.Parameter(torch.empty(int(out_neurons), int(input_size)))
        torch.nn.init.xavier_uniform_(self.weight)

    def forward(self, x):
        """Cosines [B, 1, C] for embeddings ``x`` [B, D] or [B, 1, D]."""
        x = flatten_embeddings(x, self.weight.shape[1])
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1)).unsqueeze(1)

    def extra_repr(self):
        return f"input_size={self.weight.shape[1]}, out_neurons={self.weight.shape[0]}"
