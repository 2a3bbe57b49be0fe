"""Input size limits, named once; no imports, so a config can be checked without torch."""

from __future__ import annotations

# Largest square input side accepted from a config or a model.json: 2048 x 2048 float32 is 48 MiB an
# image; 100,000 would be 120 GB and only show up as an allocation failure.
MAX_IMAGE_SIZE = 2048
