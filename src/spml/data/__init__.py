"""Data: dataset formats, the prepared on-disk layout, observed labels, caches and torch Datasets."""
