"""Losses on the cosines of a cosine head.

- ``margins``: the similarity adjustment g and the three margin types C, A, M; the
  closed-form bias. The maths of the paper, in one short file.
- ``sphereface2``: ``SphereFace2Loss`` (SpeechBrain's ``compute_cost`` interface) and the
  plain eager loss.
- ``lean``: the same loss and its gradient in one pass over class chunks (the default).
- ``sharded``: the loss for a head whose classes are split across DDP processes.
- ``aam``: SpeechBrain's AAM-softmax behind the same interface, the baseline.
"""
