"""Models: the cosine head (``head``) and the paper's length-aware ResNet34 (``resnet``)."""
