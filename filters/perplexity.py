"""The optional perplexity rule of DATA.md step 1: text a language model finds improbable is rejected.

The paper's threshold (5500) comes from Data-Juicer, which scores with a KenLM n-gram model; here the score
is from the configured causal LM (a shared `transformers_llm` model, e.g. the synthesis LLM itself), whose
perplexities are on another scale: calibrate ``max_perplexity`` on the run's own scores (they are kept as
``<id>/<field>/perplexity`` whether or not the rule is on) and apply it late with ``fusion reshard``.
"""

from __future__ import annotations

from pydantic import Field

from filters.text_rules import TextField
from pipeline.record import SampleRecord
from pipeline.stage import Filter, StageParams, UnitContext, register_stage


class PerplexityParams(StageParams):
    model: str = Field(description="A shared transformers_llm model under `models:`")
    fields: list[TextField] = Field(["description"], min_length=1)
    max_perplexity: float | None = Field(None, gt=0, description="Reject above this; null: score only")


@register_stage("perplexity")
class PerplexityFilter(Filter):
    Params = PerplexityParams
    params: PerplexityParams
    version = "1"

    def score_batch(self, records: list[SampleRecord], unit: UnitContext) -> list[dict[str, float]]:
        model = unit.models[self.params.model]
        requests, owners = [], []
        for index, record in enumerate(records):
            for field in self.params.fields:
                text = getattr(record, field)
                if text.strip():
                    requests.append((record.seed, {"text": text}))
                    owners.append((index, field))
        values = unit.cache.map(requests, lambda batch: model.call("perplexity", [r["text"] for r in batch]))
        scores: list[dict[str, float]] = [{} for _ in records]
        for (index, field), value in zip(owners, values, strict=True):
            scores[index][f"{field}/perplexity"] = value
        return scores

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        limit = self.params.max_perplexity
        if limit is None:
            return None
        for name, value in scores.items():
            if value > limit:
                return f"perplexity: {name.split('/')[0]} {value:.0f} > {limit:g}"
        return None
