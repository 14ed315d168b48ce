"""One procedural sample from (family, seed, params): scene graphs, text, conversation and the lossless image."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from generators.procedural.dialogue import conversation
from generators.procedural.families import FAMILIES
from generators.procedural.params import ProceduralParams
from generators.procedural.render import render_scene, separator_width, side_by_side
from generators.procedural.scene import Scene
from generators.procedural.templates import templates_snapshot
from generators.procedural.vocabulary import vocabulary_snapshot
from pipeline.planning import derive_seed

GENERATOR_NAME = "procedural"
GENERATOR_VERSION = "1.0.0"


@dataclass(frozen=True)
class ProceduralSample:
    family: str
    seed: int
    caption: str
    description: str
    conversations: list[dict[str, str]]
    scenes: tuple[Scene, ...]  # one, or the left and right panels of a contrast pair
    qa: tuple[dict[str, str], ...]  # one structured entry per human/gpt pair
    image: Image.Image  # RGB, never compressed

    def panel_offsets(self) -> list[int]:
        """x of each scene's left edge in ``image``."""
        width = self.scenes[0].width
        return [index * (width + separator_width(width)) for index in range(len(self.scenes))]

    def metadata(self) -> dict[str, Any]:
        """JSON with the same structure for every family, so one schema fits every record."""
        scenes = [s.to_json(offset) for s, offset in zip(self.scenes, self.panel_offsets(), strict=True)]
        return {"scenes": scenes, "qa": [dict(entry) for entry in self.qa]}


def generate_sample(family: str, seed: int, params: ProceduralParams) -> ProceduralSample:
    """The same (family, seed, params) always gives the same scenes, text and pixels.

    The family name is mixed into the seed so families sharing a seed still draw different scenes.
    """
    build = FAMILIES.get(family)
    content = build(random.Random(derive_seed(family, seed)), params)
    panels = [render_scene(scene) for scene in content.scenes]
    image = panels[0] if len(panels) == 1 else side_by_side(*panels)
    return ProceduralSample(
        family=family,
        seed=seed,
        caption=content.caption,
        description=content.description,
        conversations=conversation(list(content.turns)),
        scenes=content.scenes,
        qa=tuple(turn.qa for turn in content.turns),
        image=image,
    )


def template_fingerprint(params: ProceduralParams) -> str:
    """sha256 of every template, vocabulary and configured caption prompt: any wording change changes it."""
    payload = {"templates": templates_snapshot(), "vocabulary": vocabulary_snapshot(),
               "caption_prompts": list(params.caption_prompts)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
