"""The procedural_scene stage: records for a work unit, their images and provenance, and one JSON schema for
the metadata of every family (Hugging Face `datasets` infers a single schema across all samples)."""

import json

import pytest

import generators.procedural  # noqa: F401  (registers the stage)
from generators.procedural import ProceduralParams, generate_sample, template_fingerprint, templates
from generators.procedural.stage import ProceduralSceneStage
from pipeline.images import decode_image
from pipeline.record import SampleRecord
from pipeline.stage import STAGES, RunContext
from pipeline.units import WorkUnit

FAMILY_NAMES = ("SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthMultiChoice", "SynthConvShort",
                "SynthContrastShort")


def make_stage(**params) -> ProceduralSceneStage:
    context = RunContext(run_seed=0, jpeg_quality=85, provenance={"git_sha": "abc123"})
    return STAGES.get("procedural_scene")(ProceduralParams(**params), context)


def unit_for(category: str, num_samples: int = 4) -> WorkUnit:
    return WorkUnit(category=category, split="train", index=2, num_samples=num_samples, seed=987654321)


def skeleton(value):
    """The JSON type structure of ``value``; list elements must all share one structure, and never be empty."""
    if isinstance(value, dict):
        return {key: skeleton(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        assert value, "empty lists have no element type"
        shapes = [skeleton(item) for item in value]
        assert all(s == shapes[0] for s in shapes), f"list elements differ: {shapes}"
        return [shapes[0]]
    assert value is not None, "None has no type"
    return type(value).__name__


def test_the_stage_is_registered_with_its_params():
    assert STAGES.get("procedural_scene") is ProceduralSceneStage
    assert ProceduralSceneStage.Params is ProceduralParams


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_stage_creates_the_unit_records(family):
    unit = unit_for(family)
    existing = SampleRecord(key="already_here", category=family, split="train", seed=1)
    records = make_stage().process(unit, [existing])
    assert records[0] is existing
    created = records[1:]
    assert [r.key for r in created] == [unit.sample_key(i) for i in range(4)]
    assert [r.seed for r in created] == [unit.sample_seed(i) for i in range(4)]
    for record in created:
        assert (record.category, record.split, record.status) == (family, "train", "pending")
        sample = generate_sample(family, record.seed, ProceduralParams())
        assert record.caption == record.seed_caption == sample.caption
        assert record.description == sample.description and record.conversations == sample.conversations
        assert record.metadata == sample.metadata()
        image = decode_image(record.image)
        assert image.mode == "RGB" and image.size == sample.image.size
        assert image.size[1] == 64 and image.size[0] == (64 if family != "SynthContrastShort" else 130)
        provenance = record.provenance
        assert provenance["git_sha"] == "abc123" and provenance["generator"] == "procedural"
        assert provenance["generator_version"] == generators.procedural.GENERATOR_VERSION
        assert provenance["template_hash"] == template_fingerprint(ProceduralParams())
        assert json.loads(json.dumps(record.to_json_dict())) == record.to_json_dict()


def test_image_size_param_reaches_the_jpeg():
    record = make_stage(image_size=96).process(unit_for("SynthColor", 1), [])[0]
    assert decode_image(record.image).size == (96, 96)


def test_metadata_and_records_have_one_schema_across_families():
    records = [r for family in FAMILY_NAMES for r in make_stage().process(unit_for(family, 6), [])]
    metadata_skeletons = {json.dumps(skeleton(r.metadata), sort_keys=True) for r in records}
    assert len(metadata_skeletons) == 1, metadata_skeletons
    record_skeletons = {json.dumps(skeleton({k: v for k, v in r.to_json_dict().items() if k != "scores"}),
                                   sort_keys=True) for r in records}
    assert len(record_skeletons) == 1
    scene = records[0].metadata["scenes"][0]
    assert isinstance(scene["objects"][0]["x"], int) and isinstance(scene["background"]["colors"][0][0], int)


def test_the_skeleton_check_can_fail():
    with pytest.raises(AssertionError):
        skeleton({"qa": [{"answer": "A"}, {"answer": None}]})
    assert skeleton({"x": 1}) != skeleton({"x": 1.0})


def test_template_hash_follows_every_template_and_prompt(monkeypatch):
    params = ProceduralParams()
    original = template_fingerprint(params)
    assert original == template_fingerprint(ProceduralParams()) and len(original) == 64
    assert template_fingerprint(ProceduralParams(caption_prompts=("Describe the image briefly.",))) != original
    changed = dict(templates.QUESTION_TEMPLATES, count_total=("How many shapes can you count?",))
    monkeypatch.setattr(templates, "QUESTION_TEMPLATES", changed)
    assert template_fingerprint(params) != original
