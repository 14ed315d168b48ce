"""The twelve task families of the paper: which steps each runs, with which templates, schemas and limits.

Stages pick a record's family by its category (a stage's ``families`` param maps other category names onto
a family). Pretraining families write a caption from the seed and ask for it back in a brief-caption turn;
instruction families write a description, then QA from the description text. SynthTextQA's description
names its text elements, which its QA must cover; the contrast families write a left and a right description
from one seed, rendered side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from generators.prompts import schemas
from generators.prompts.schemas import Limits

CAPTION_STEP, DESCRIPTION_STEP, QA_STEP = "caption", "description", "qa"


@dataclass(frozen=True)
class Family:
    name: str
    kind: Literal["pretraining", "instruction"]
    text_schema: type[BaseModel]  # the response of the first LLM step (caption or description)
    qa_schema: type[BaseModel] | None = None
    # How answers read: "short" questions carry the single-word-or-phrase instruction; "text" answers quote text.
    answer_style: Literal["caption", "multiple_choice", "short", "long", "text"] = "caption"
    limits: Limits = field(default_factory=Limits)
    contrast: bool = False  # two descriptions, two images side by side
    text_elements: bool = False  # the description lists rendered texts the QA must cover

    @property
    def text_step(self) -> str:
        return CAPTION_STEP if self.kind == "pretraining" else DESCRIPTION_STEP


_CONTRAST = Limits(description_min_words=120, description_max_words=180, max_qas=7)
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("SynthColor", "pretraining", schemas.ColorCaption),
    Family("SynthCount", "pretraining", schemas.CountCaption),
    Family("SynthSpatial", "pretraining", schemas.SpatialCaption),
    Family("SynthText", "pretraining", schemas.TextCaption),
    Family("SynthScene", "pretraining", schemas.SceneCaption),
    Family("SynthMultiChoice", "instruction", schemas.Description, schemas.MultipleChoiceQAs, "multiple_choice"),
    Family("SynthConvShort", "instruction", schemas.Description, schemas.ShortQAs, "short"),
    Family("SynthConvLong", "instruction", schemas.Description, schemas.LongQAs, "long"),
    Family("SynthReasoning", "instruction", schemas.Description, schemas.ReasoningQAs, "long",
           Limits(max_qas=6, long_answer_min_words=100)),
    Family("SynthTextQA", "instruction", schemas.TextDescription, schemas.TextQAs, "text",
           Limits(description_max_words=150, max_qas=5, short_answer_max_words=12), text_elements=True),
    Family("SynthContrastShort", "instruction", schemas.ContrastDescriptions, schemas.ContrastShortQAs, "short",
           _CONTRAST, contrast=True),
    Family("SynthContrastLong", "instruction", schemas.ContrastDescriptions, schemas.ContrastLongQAs, "long",
           _CONTRAST, contrast=True),
]}


def family_of(category: str, mapping: dict[str, str] | None = None) -> Family:
    name = (mapping or {}).get(category, category)
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"category {category!r} is served by no prompt family; families: {', '.join(FAMILIES)} "
                       "(map other category names with the stage's `families` param)") from None


def category_problems(categories: list[str], mapping: dict[str, str], stage_id: str) -> list[str]:
    """Why a stage cannot serve these categories (config-time check)."""
    problems = [f"stage {stage_id!r}: `families` maps {c!r} to unknown family {f!r}; families: {', '.join(FAMILIES)}"
                for c, f in mapping.items() if f not in FAMILIES]
    problems += [f"stage {stage_id!r}: no prompt template serves category {c!r}; name categories after a family "
                 f"({', '.join(FAMILIES)}) or map them with the stage's `families` param"
                 for c in categories if mapping.get(c, c) not in FAMILIES and c not in mapping]
    return problems


def effective_limits(family: Family, overrides: dict[str, dict[str, int]]) -> Limits:
    """The family's limits with a stage's overrides (by family name, or ``all``) applied."""
    merged = {**overrides.get("all", {}), **overrides.get(family.name, {})}
    return Limits.model_validate({**family.limits.model_dump(), **merged}) if merged else family.limits
