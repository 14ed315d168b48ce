"""Fixtures for the filter tests: one small synthesized dataset with filters, rejects and dedup, per session."""

from pathlib import Path

import pytest

from tests.synthesis.conftest import small_config

FILTER_STAGES = (
    "stages=[{name: procedural_scene},"
    " {name: text_rules, params: {fields: [caption, description], max_char_repetition: null}},"
    " {name: qa_rules}, {name: rules}, {name: detail_score},"
    " {name: dedup_text, params: {source: caption}}, {name: dedup_minhash, params: {source: caption, threshold: 0.7, shingle_words: 1}},"
    " {name: dedup_image_hash}]"
)


def filtered_config(*overrides: str):
    return small_config("categories={SynthColor: {train: 12, test: 4}, SynthMultiChoice: {train: 10}}",
                        "dataset.max_attempts_factor=3", FILTER_STAGES, *overrides)


@pytest.fixture(scope="session")
def filtered_dataset(tmp_path_factory) -> Path:
    """Synthesized in-process: two families, both splits, text, QA and image filters and run-wide dedup."""
    from pipeline.synthesis import synthesize

    out = tmp_path_factory.mktemp("filtered") / "dataset"
    synthesize(filtered_config(), out, use_ray=False)
    return out
