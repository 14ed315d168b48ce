"""The dataset card (``README.md``): built from what is on disk, checked offline, with sample images.

``build`` writes the Hugging Face YAML header and the body, ``validate`` checks a card against the files,
``samples`` picks and stores the images the card shows.
"""

from pipeline.card.build import build_card, size_category, write_card
from pipeline.card.validate import REQUIRED_YAML_FIELDS, validate_card

__all__ = ["REQUIRED_YAML_FIELDS", "build_card", "size_category", "validate_card", "write_card"]
