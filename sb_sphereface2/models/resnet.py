"""The seed paper's ResNet34 speaker-embedding model as a SpeechBrain lobe.

A 2-D ResNet over (frequency, time) of fbank features: a 3x3 stem convolution, four
stages of basic blocks (34 layers with blocks 3-4-6-3), statistics pooling (mean and
standard deviation over time) of the flattened channels x frequency map, and a linear
layer to the embedding. With base width 32 (32-64-128-256 channels) and 80-dim fbank
it has 6.63 M parameters, as in the paper.

Unlike ``speechbrain.lobes.models.ResNet.ResNet`` it honours ``lengths``: frames past
the end of each utterance are kept at exactly zero through every layer and excluded
from the pooling, so in eval mode a padded utterance gets the same embedding as the
same utterance alone.
"""

import torch
import torch.nn.functional as F


def _halve_lengths(lengths):
    """Valid length after a stride-2 convolution with kernel 3 / padding 1 (or kernel 1 /
    padding 0): ceil(L / 2)."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


def _time_mask(lengths, max_len):
    """Mask [B, 1, 1, T] of 1.0 for valid frames, 0.0 past each utterance's end."""
    frames = torch.arange(max_len, device=lengths.device)
    return (frames[None, :] < lengths[:, None]).to(torch.get_default_dtype())[:, None, None, :]


class BasicBlock(torch.nn.Module):
    """Residual block of two 3x3 convolutions with batch norm, keeping padded frames at zero.

    Arguments
    ---------
    in_channels : int
        Input channels.
    out_channels : int
        Output channels.
    stride : int
        Stride on both frequency and time of the first convolution (and of the 1x1
        shortcut projection, present when stride != 1 or the channel count changes).

    Example
    -------
    >>> block = BasicBlock(8, 16, stride=2)
    >>> x = torch.randn(2, 8, 10, 12)
    >>> y, lengths = block(x, torch.tensor([12, 7]))
    >>> y.shape, lengths.tolist()
    (torch.Size([2, 16, 5, 6]), [6, 4])
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.stride = stride
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(out_channels)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                torch.nn.BatchNorm2d(out_channels),
            )

    def forward(self, x, lengths):
        """Block output [B, C_out, F', T'] (zero past each length) and the new lengths [B]."""
        if self.stride == 2:
            out_lengths = _halve_lengths(lengths)
        elif self.stride == 1:
            out_lengths = lengths
        else:
            raise ValueError(f"only strides 1 and 2 are supported, got {self.stride}")
        out = F.relu(self.bn1(self.conv1(x)))
        mask = _time_mask(out_lengths, out.shape[-1]).to(out.dtype)
        out = self.bn2(self.conv2(out * mask))
        residual = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + residual) * mask, out_lengths


class ResNet(torch.nn.Module):
    """ResNet speaker-embedding extractor with length-aware statistics pooling
    (the seed paper's ResNet34 with the defaults).

    Input fbank features [B, T, F] (SpeechBrain's ``Fbank`` layout) are read as a
    one-channel image over (F, T). Each stage after the first halves both frequency
    and time; the final map [B, C, F', T'] is flattened to [B, C*F', T'] and pooled
    into its mean and standard deviation (population variance, floored at ``eps``)
    over each utterance's valid frames, then projected to ``lin_neurons``.

    ``lengths`` follow SpeechBrain's convention: the fraction of the padded length
    ``T`` that each utterance occupies; the valid frame count is round(lengths * T),
    and becomes ceil(L / 2) after each stride-2 stage. Frames past it are zeroed after
    every convolution/batch norm/ReLU, so each convolution sees exactly the zero padding
    it would see on the utterance alone. Hence in eval mode embeddings do not depend on
    padding. In train mode BatchNorm uses batch statistics, which include the zeroed
    padded positions, so the padding of the other utterances slightly changes them
    (as in any batch-normalised model).

    Arguments
    ---------
    input_size : int
        Feature dimension F (80 in the paper).
    channels : sequence of int
        Channels of the four stages (the stem has ``channels[0]``).
    num_blocks : sequence of int
        Basic blocks per stage: (3, 4, 6, 3) is ResNet34, (2, 2, 2, 2) ResNet18.
    strides : sequence of int
        Stride (1 or 2) of each stage, on frequency and time.
    lin_neurons : int
        Embedding dimension.
    eps : float
        Floor of the pooled variance.

    Returns
    -------
    torch.Tensor
        From ``forward``: embeddings [B, 1, lin_neurons] (like ``ECAPA_TDNN``).

    Example
    -------
    >>> model = ResNet(input_size=20, channels=(4, 8, 8, 16), num_blocks=(1, 1, 1, 1), lin_neurons=32)
    >>> model(torch.randn(3, 50, 20), lengths=torch.tensor([1.0, 0.6, 0.3])).shape
    torch.Size([3, 1, 32])
    >>> sum(p.numel() for p in ResNet().parameters())  # the paper's ResNet34
    6634336
    """

    def __init__(
        self,
        input_size=80,
        channels=(32, 64, 128, 256),
        num_blocks=(3, 4, 6, 3),
        strides=(1, 2, 2, 2),
        lin_neurons=256,
        eps=1e-7,
    ):
        super().__init__()
        if not len(channels) == len(num_blocks) == len(strides):
            raise ValueError(
                f"channels, num_blocks and strides need one entry per stage, got "
                f"{len(channels)}, {len(num_blocks)} and {len(strides)}"
            )
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must be 1 or 2, got {tuple(strides)}")
        if int(input_size) < 1 or int(lin_neurons) < 1 or any(int(b) < 1 for b in num_blocks):
            raise ValueError(
                f"need input_size, lin_neurons and every num_blocks >= 1, got {input_size}, "
                f"{lin_neurons} and {tuple(num_blocks)}"
            )
        self.input_size = int(input_size)
        self.eps = float(eps)
        self.conv1 = torch.nn.Conv2d(1, channels[0], 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels[0])
        blocks = []
        in_channels = channels[0]
        freq = self.input_size
        for out_channels, count, stride in zip(channels, num_blocks, strides):
            for i in range(int(count)):
                blocks.append(BasicBlock(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
            if stride == 2:
                freq = (freq + 1) // 2
        self.blocks = torch.nn.ModuleList(blocks)
        self.pooled_size = 2 * in_channels * freq
        self.embedding = torch.nn.Linear(self.pooled_size, int(lin_neurons))

    def forward(self, x, lengths=None):
        """Embeddings [B, 1, lin_neurons] of features ``x`` [B, T, F] with relative
        ``lengths`` [B] (None: all full length)."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected features [B, T, {self.input_size}], got {tuple(x.shape)}")
        batch, max_len = x.shape[0], x.shape[1]
        if lengths is None:
            frames = torch.full((batch,), max_len, dtype=torch.long, device=x.device)
        else:
            frames = torch.round(lengths.to(x.device, torch.float64) * max_len).long()
            frames = frames.clamp(1, max_len)
        x = x.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        mask = _time_mask(frames, max_len).to(x.dtype)
        x = F.relu(self.bn1(self.conv1(x * mask))) * mask
        for block in self.blocks:
            x, frames = block(x, frames)
        x = x.flatten(1, 2)  # [B, C*F', T']
        mask = _time_mask(frames, x.shape[-1]).to(x.dtype)[:, 0]  # [B, 1, T']
        count = frames.to(x.dtype)[:, None]
        mean = (x * mask).sum(-1) / count
        var = (((x - mean.unsqueeze(-1)) * mask) ** 2).sum(-1) / count
        stats = torch.cat([mean, var.clamp(min=self.eps).sqrt()], dim=-1)
        return self.embedding(stats).unsqueeze(1)
