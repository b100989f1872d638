"""Losses on the cosines of a cosine head.

- ``margins``: the similarity adjustment g and the three margin types C, A, M;
  ``SphereFace2Settings`` (one configuration, the margin rule of each type); the
  closed-form bias. The maths of the paper, in one short file.
- ``base``: what every cosine-margin loss shares (input checks, the run-time margin and
  its check, the start from the margin schedule).
- ``sphereface2``: ``SphereFace2Loss`` (SpeechBrain's ``compute_cost`` interface) and
  ``class_block_loss``, the one entry point for the loss terms of a block of classes
  (the whole head, or one process's shard), plain or lean.
- ``lean``: those terms and their gradient in one pass over class chunks (the default).
- ``negatives``: the elementwise kernel of the lean loss, compiled when it pays.
- ``sharded``: the loss for a head whose classes are split across DDP processes.
- ``aam``: SpeechBrain's AAM-softmax behind the same interface, the baseline.
"""
