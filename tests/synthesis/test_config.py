from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config, resolve_preset, save_config
from tests.synthesis.conftest import small_config


def test_demo_preset_loads_with_typed_stage_params():
    config = load_config("demo")
    assert config.name == "demo"
    assert [s.name for s in config.stages][:2] == ["procedural_scene", "rules"]
    rules = config.stages[1].typed_params()
    assert rules.max_caption_words == 12


def test_overrides_reach_nested_fields_and_list_items():
    config = load_config("demo", ["seed=7", "categories.SynthColor.train=3", "stages.1.params.max_qa_turns=5",
                                  "ray.num_cpus=1"])
    assert config.seed == 7
    assert config.categories["SynthColor"].train == 3
    assert config.stages[1].typed_params().max_qa_turns == 5
    assert config.ray.num_cpus == 1


def test_type_error_names_field_and_file():
    with pytest.raises(ConfigError) as error:
        load_config("demo", ["categories.SynthColor.train=lots"])
    message = str(error.value)
    assert "configs/demo.yaml" in message
    assert "categories.SynthColor.train" in message


def test_unknown_field_is_an_error(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("base: demo\ndataset:\n  unit_sise: 10\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: field 'dataset.unit_sise'"):
        load_config(path)


def test_unknown_stage_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown stage 'diffuse'.*procedural_scene"):
        load_config("demo", ["stages.0.name=diffuse"])


def test_bad_stage_params_name_the_stage_and_param():
    with pytest.raises(ConfigError, match=r"stage 'rules': params.max_qa_turns"):
        load_config("demo", ["stages.1.params.max_qa_turns=0"])
    with pytest.raises(ConfigError, match=r"stage 'rules': params.no_such_param"):
        load_config("demo", ["stages.1.params.no_such_param=1"])


def test_base_presets_merge_and_cycles_are_reported(tmp_path: Path):
    (tmp_path / "child.yaml").write_text("base: demo\nseed: 3\ncategories:\n  SynthColor: {train: 5}\n")
    config = load_config(tmp_path / "child.yaml")
    assert config.seed == 3 and config.categories["SynthColor"].train == 5
    assert config.categories["SynthCount"].train == load_config("demo").categories["SynthCount"].train

    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_malformed_inputs_are_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        resolve_preset("no-such-preset")
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config("demo", ["seed"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config("demo", ["stages.9.params.x=1"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_saved_config_reloads_identically(tmp_path: Path):
    config = load_config("demo", ["seed=11"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 11


def test_a_stage_that_cannot_be_built_fails_the_run_at_once_naming_it(tmp_path):
    from pipeline.synthesis import synthesize

    config = small_config("plugins=[tests.synthesis.plugin_stages]",
                          "stages=[{name: procedural_scene}, {name: test_unbuildable, id: broken}]")
    with pytest.raises(ConfigError, match=r"stages.1 \('broken', test_unbuildable\) cannot be built: "
                                          r"TypeError: Can't instantiate abstract class"):
        synthesize(config, tmp_path / "out", use_ray=False)
    assert not list((tmp_path / "out").glob("work/*/*"))  # no unit ran


def test_the_driver_builds_cpu_stages_only_never_a_stage_with_its_own_model():
    from pipeline.synthesis import check_stages_build, run_context

    config = small_config("plugins=[tests.synthesis.plugin_stages]",
                          "stages=[{name: procedural_scene}, {name: test_actor_only_model}]")
    check_stages_build(config, run_context(config))  # its model would load on the driver otherwise
