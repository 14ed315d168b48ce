"""Best-of-N: keep the candidate image with the highest score, record every candidate's score."""

from __future__ import annotations

from pydantic import Field

from pipeline.record import SampleRecord
from pipeline.stage import Stage, StageParams, UnitContext, register_stage


class ChooseParams(StageParams):
    score: str = Field(description="Per-candidate score to maximise, as '<stage id>/<metric>'; candidate i's value "
                                   "is read from '<stage id>/candidate_<i>/<metric>'")


def candidate_score_name(score: str, index: int) -> str:
    stage_id, _, metric = score.partition("/")
    return f"{stage_id}/candidate_{index}/{metric}"


@register_stage("choose_image")
class ChooseImage(Stage):
    """Keeps the best of a record's candidate images as its image; the lowest index wins a tie."""

    role = "filter"
    Params = ChooseParams
    params: ChooseParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            if not record.candidates:
                if record.image is None:
                    record.reject(self.id, "no_candidates: the record has no image to choose from")
                continue
            values = []
            for index in range(len(record.candidates)):
                name = candidate_score_name(self.params.score, index)
                if name not in record.scores:
                    raise KeyError(f"candidate {index} of {record.key} has no score {name!r}; is a scoring stage "
                                   "configured before this one?")
                values.append(record.scores[name])
            best = max(range(len(values)), key=lambda i: (values[i], -i))
            chosen = record.candidates[best]
            # Seeds are 63-bit integers, which a float score would round: they go in the metadata.
            record.metadata["image_seed"] = chosen.seed
            record.metadata["candidate_seeds"] = [c.seed for c in record.candidates]
            record.image = chosen.image
            record.candidates = []
            record.scores[f"{self.id}/chosen_index"] = float(best)
            # Every per-candidate score of the chosen image is also the record's own score of that name.
            marker = f"/candidate_{best}/"
            for name, value in list(record.scores.items()):
                if marker in name:
                    record.scores[name.replace(marker, "/", 1)] = value
