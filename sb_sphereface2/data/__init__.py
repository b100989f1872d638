"""Data: preparation of a corpus into training/test CSVs (``prepare``), data loading
(``dataio``: CSV datasets; ``audio``: segment reading, speed change, crops; ``speed``:
speed-specific classes and per-item draws; ``speakers``: the label encoder; ``shard_writer``
and ``shards``: tar shards, packed and streamed; ``throughput``: loader and step rates),
augmentation CSVs (``augmentation``), trial lists (``trials``) and training CSVs
(``training_csv``)."""
