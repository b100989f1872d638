"""Pretrained-model folders: strict checkpoint loading (``checkpoint``), the folder layout,
writing, checking and loading it (``folder``), initialising a recipe from a pretrained
model (``initialise``), exporting a trained model for the model hub (``export``) with its
model card (``card``)."""
