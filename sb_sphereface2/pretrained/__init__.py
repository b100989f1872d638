"""Pretrained-model folders: writing, checking and loading them (``folder``), export for
the model hub (``export``)."""
