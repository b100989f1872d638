"""Data: preparation of a corpus into training/test CSVs (``prepare``), data loading
(``dataio``), augmentation CSVs (``augmentation``), trial lists (``trials``) and
training CSVs (``training_csv``)."""
