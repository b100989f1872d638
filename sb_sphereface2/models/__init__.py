"""Models: the cosine head (``head``) and its DDP-sharded variant (``sharded_head``), the
paper's length-aware ResNet34 (``resnet``) and Kaldi-compatible batched fbank features
(``features``)."""
