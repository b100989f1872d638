"""Labels: class-wise label-noise injection (``noise``), clustering of embeddings
(``clustering``, scikit-learn), clustering scores (``scores``) and pseudo-labelled
training CSVs (``pseudo``)."""
