"""The procedural_scene stage: records for a work unit, their images and provenance, and one JSON schema for
the metadata of every family (Hugging Face `datasets` infers a single schema across all samples)."""

import json

import numpy as np
import pytest

import generators.procedural
from generators.procedural import ProceduralParams, generate_sample, template_fingerprint, templates
from generators.procedural.stage import ProceduralSceneStage
from pipeline.stage import STAGES
from tests.stage_helpers import run_stages, unit_for

FAMILY_NAMES = ("SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthMultiChoice", "SynthConvShort",
                "SynthContrastShort")


def make_records(family: str, num_samples: int = 4, **params):
    unit = unit_for(family, num_samples, first_position=10)
    records, _ = run_stages([{"name": "procedural_scene", "params": params}], unit=unit)
    return unit, records


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
def test_the_stage_fills_the_unit_records(family):
    unit, records = make_records(family)
    assert [r.key for r in records] == [unit.sample_key(p) for p in range(10, 14)]
    assert [r.seed for r in records] == [unit.sample_seed(p) for p in range(10, 14)]
    for record in records:
        assert (record.category, record.split, record.status) == (family, "train", "pending")
        sample = generate_sample(family, record.seed, ProceduralParams())
        assert record.caption == record.seed_caption == sample.caption
        assert record.description == sample.description and record.conversations == sample.conversations
        assert record.metadata == sample.metadata()
        # Lossless: exactly the generator's pixels.
        assert record.image.dtype == np.uint8 and np.array_equal(record.image, np.asarray(sample.image))
        assert record.image.shape[0] == 64 and record.image.shape[1] == (64 if family != "SynthContrastShort" else 130)
        provenance = record.provenance
        stage = provenance["stages"]["procedural_scene"]
        assert provenance["git_sha"] == "abc123" and stage["generator"] == "procedural"
        assert stage["version"] == generators.procedural.GENERATOR_VERSION
        assert stage["template_hash"] == template_fingerprint(ProceduralParams())
        assert json.loads(json.dumps(record.to_json_dict())) == record.to_json_dict()


def test_image_size_param_reaches_the_image():
    _, records = make_records("SynthColor", 1, image_size=96)
    assert records[0].image.shape == (96, 96, 3)


def test_metadata_and_records_have_one_schema_across_families():
    records = [r for family in FAMILY_NAMES for r in make_records(family, 6)[1]]
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
