"""Labels: class-wise label-noise injection (``noise``) and pseudo-labels from
clustered embeddings (``pseudo``)."""
