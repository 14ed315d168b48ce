"""Procedural scene backend: scene graphs rendered with PIL, with captions, descriptions and QA that are true
by construction. Importing the package registers the ``procedural_scene`` stage."""

from generators.procedural import stage  # noqa: F401  (registers the stage)
from generators.procedural.families import FAMILIES, family_names
from generators.procedural.params import ProceduralParams
from generators.procedural.sample import GENERATOR_VERSION, ProceduralSample, generate_sample, template_fingerprint

__all__ = ["FAMILIES", "GENERATOR_VERSION", "ProceduralParams", "ProceduralSample", "family_names", "generate_sample",
           "template_fingerprint"]
