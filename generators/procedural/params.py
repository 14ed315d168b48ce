"""Parameters of the procedural scene backend, validated so a bad config names the field at fault."""

from __future__ import annotations

from pydantic import Field, field_validator

from generators.procedural.templates import CAPTION_PROMPTS
from generators.procedural.vocabulary import BACKGROUND_STYLES
from pipeline.record import IMAGE_TOKEN
from pipeline.stage import StageParams

MAX_SHAPES_PER_SCENE = 6  # the paper's SynthCount limit, and what still fits at 32 px


class ProceduralParams(StageParams):
    image_size: int = Field(64, ge=32, le=512, description="Side of each square scene in px; a contrast image is "
                                                           "two scenes and a separator wide")
    max_objects: int = Field(MAX_SHAPES_PER_SCENE, ge=2, le=MAX_SHAPES_PER_SCENE,
                             description="Most shapes in one scene (signs not counted)")
    max_questions: int = Field(8, ge=1, le=8, description="Most QAs in an instruction conversation; contrast "
                                                          "conversations stop at 7")
    text_probability: float = Field(0.3, ge=0.0, le=1.0,
                                    description="Chance that a multiple-choice or short-answer scene holds a sign")
    backgrounds: tuple[str, ...] = Field(BACKGROUND_STYLES, min_length=1, description="Background styles to draw from")
    caption_prompts: tuple[str, ...] = Field(CAPTION_PROMPTS, min_length=1,
                                             description="Brief-caption requests for the pretraining families")

    @field_validator("backgrounds")
    @classmethod
    def _known_backgrounds(cls, styles: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in styles if s not in BACKGROUND_STYLES]
        if unknown:
            raise ValueError(f"unknown background styles {unknown}; known: {', '.join(BACKGROUND_STYLES)}")
        if len(set(styles)) != len(styles):
            raise ValueError(f"background styles are repeated: {list(styles)}")
        return styles

    @field_validator("caption_prompts")
    @classmethod
    def _usable_prompts(cls, prompts: tuple[str, ...]) -> tuple[str, ...]:
        for prompt in prompts:
            if not prompt.strip():
                raise ValueError("caption prompts must not be blank")
            if IMAGE_TOKEN in prompt:
                raise ValueError(f"caption prompt {prompt!r} must not contain {IMAGE_TOKEN}; it is added in front")
        return prompts
