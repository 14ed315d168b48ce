"""Training presets carry the paper's recipe; errors name the file and the field."""

from __future__ import annotations

import pytest

from train.config import TrainConfigError, load_train_config, train_config_from_section

RECIPE = {  # fusion-paper-notes section 2
    "stage1": (256, 2e-5, 2e-5, 2048),
    "stage1.5": (128, 2e-5, 2e-6, 4096),
    "stage2": (128, 1e-5, 1e-6, 4096),
}


@pytest.mark.parametrize("stage", sorted(RECIPE))
def test_stage_presets_follow_the_paper(stage):
    config = load_train_config(stage)
    assert (config.batch.global_batch, config.optim.lr, config.optim.vision_lr, config.max_length) == RECIPE[stage]
    assert config.optim.warmup_ratio == 0.03 and config.optim.schedule == "cosine"
    assert config.optim.weight_decay == 0.0 and config.epochs == 1 and config.model.trainable == {}
    assert config.precision == "auto" and config.gradient_checkpointing
    assert config.data.sources and all(s.sampling for s in config.data.sources)


def test_errors_name_the_file_and_the_field():
    with pytest.raises(TrainConfigError, match=r"train-tiny.yaml: field 'optim.lr'"):
        load_train_config("tiny", ["optim.lr=-1"])
    with pytest.raises(TrainConfigError, match=r"data.sources.0.sampling"):
        load_train_config("tiny", ["data.sources=[{path: x, sampling: 'half'}]"])
    with pytest.raises(TrainConfigError, match="presets: .*stage1"):
        load_train_config("nope")
    section = train_config_from_section({"base": "tiny", "max_steps": 7}, source="configs/demo.yaml")
    assert section.max_steps == 7 and section.name == "tiny"


def test_data_fills_the_sources_that_name_no_path_and_replaces_sources_that_all_name_one():
    from train.sources import DataSourceError, resolve_sources
    from train.trainer import with_data

    sources = ("[{name: scenes}, {name: text, text_only: true, context: description, weight: 0.25}, "
               "{name: extra, path: /elsewhere}]")
    mixture = load_train_config("tiny", [f"data.sources={sources}"])
    filled = with_data(mixture, "/data/demo").data.sources
    assert [s.path for s in filled] == ["/data/demo", "/data/demo", "/elsewhere"]
    assert [s.weight for s in filled] == [1.0, 0.25, 1.0] and filled[1].context == "description"
    named = load_train_config("tiny", ["data.sources=[{path: /a}, {path: /b}]"])
    assert [s.path for s in with_data(named, "/data/demo").data.sources] == ["/data/demo"]
    with pytest.raises(DataSourceError, match=r"data.sources.0 \(scenes\) names no path: give --data"):
        resolve_sources(mixture.data.sources, seed=0)
