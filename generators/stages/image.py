"""`diffusion_image`: renders each record's caption or description with the shared diffusion model.

Each candidate image has its own seed (from the record's seed, the stage id and the candidate index); with
``candidates`` > 1 they go to ``record.candidates`` for an image-score stage to score and ``choose_image``
to pick from. Contrast families render a left and a right panel per candidate, composited side by side.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from generators.diffusion.composite import composite_side_by_side
from generators.prompts.families import family_of
from generators.stages.text import render_prompts
from pipeline.planning import derive_seed
from pipeline.record import ImageCandidate, SampleRecord
from pipeline.stage import Stage, StageParams, UnitContext, register_stage


class ImageParams(StageParams):
    model: str = Field(description="The shared diffusion model (a name under `models:`)")
    candidates: int = Field(1, ge=1, le=16, description="Images per record (best-of-N); above 1, choose later")
    prompt_prefix: str = Field("", description="Prepended to every prompt, e.g. a style")
    families: dict[str, str] = Field(default_factory=dict, description="Category -> family, for other names")


@register_stage("diffusion_image")
class ImageStage(Stage):
    role = "generator"
    version = "1"
    Params = ImageParams
    params: ImageParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        requests, owners = [], []
        for record in records:
            prompts = [self.params.prompt_prefix + p for p in render_prompts(record, family_of(record.category,
                                                                                              self.params.families))]
            if not all(p.strip() for p in prompts):
                record.reject(self.id, "no_prompt: nothing to render (is a description stage configured first?)")
                continue
            for candidate in range(self.params.candidates):
                candidate_seed = derive_seed(record.seed, self.id, candidate)
                for panel, prompt in enumerate(prompts):
                    seed = candidate_seed if len(prompts) == 1 else derive_seed(candidate_seed, "panel", panel)
                    requests.append((seed, {"prompt": prompt, "seed": seed}))
                owners.append((record, candidate_seed, len(prompts)))
        images = unit.cache.map(requests, lambda batch: unit.models[self.params.model].call("render", batch))
        cursor = 0
        by_record: dict[str, list[ImageCandidate]] = {}
        for record, candidate_seed, panels in owners:
            parts = images[cursor:cursor + panels]
            cursor += panels
            image = parts[0] if panels == 1 else composite_side_by_side(*parts)
            by_record.setdefault(record.key, []).append(ImageCandidate(candidate_seed, image))
        for record in records:
            candidates = by_record.get(record.key)
            if not candidates:
                continue
            if self.params.candidates == 1:
                record.image = candidates[0].image
                record.metadata["image_seed"] = candidates[0].seed
            else:
                record.candidates = candidates

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "candidates": self.params.candidates,
                "prompt_prefix": self.params.prompt_prefix}

    @classmethod
    def category_problems(cls, params: ImageParams, categories: list[str]) -> list[str]:
        from generators.prompts.families import category_problems

        return category_problems(categories, params.families, cls.kind)
