"""The model-backed synthesis stages: seed captions -> caption or description -> image -> QA."""
