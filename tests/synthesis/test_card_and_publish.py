import json
import shutil

import pytest
import yaml

from jobs.cli import main
from pipeline.card import REQUIRED_YAML_FIELDS, size_category, validate_card
from pipeline.publish import PublishError, plan_upload, publish
from tests.synthesis.conftest import FAMILIES


def card_yaml(root):
    text = (root / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_card_yaml_carries_the_hub_fields(synth_output):
    header, body = card_yaml(synth_output)
    for field in REQUIRED_YAML_FIELDS:
        assert header[field], field
    assert header["annotations_creators"] == ["machine-generated"]
    assert header["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == {"default", *FAMILIES}
    assert configs["default"]["default"] is True
    assert {f["split"] for f in configs["default"]["data_files"]} == {"train", "test"}
    info = {i["config_name"]: {s["name"]: s["num_examples"] for s in i["splits"]} for i in header["dataset_info"]}
    assert info["default"] == {"train": 7 * 12, "test": 7 * 4}
    assert info["SynthColor"] == {"train": 12, "test": 4}
    assert validate_card(synth_output) == []


def test_card_body_explains_generation_and_loading(synth_output):
    _, body = card_yaml(synth_output)
    for section in ("## How it was generated", "## Cost per stage", "## Statistics per category", "## Samples", "## Loading",
                    "## Reproducing", "## Citation"):
        assert section in body
    assert "| `rules` | `rules` | filter |" in body and "| `procedural_scene` | `procedural_scene` | generator |" in body
    assert "## Cost per stage" in body and "GPU-seconds per accepted sample" in body
    assert "import webdataset" in body and 'load_dataset("webdataset"' in body
    assert "fusion synth --config config.yaml" in body and "arXiv:2504.09925" in body
    images = [line for line in body.splitlines() if line.startswith("![")]
    assert len(images) == len(FAMILIES)
    for family in FAMILIES:
        assert f"| {family} | train | 12 |" in body


def test_card_problems_are_found(synth_output, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    sizes = json.loads((out / "sizes.json").read_text())
    sizes["data/SynthColor/train-00000.tar"] += 1
    (out / "sizes.json").write_text(json.dumps(sizes))
    shutil.rmtree(out / "data/SynthText")
    problems = validate_card(out)
    assert any("'SynthColor' split 'train': dataset_info says 12, sizes.json says 13" in p for p in problems)
    assert any("'SynthText' split 'test': data/SynthText/test-00000.tar matches no file" in p for p in problems)


def test_card_command_rewrites_the_card(synth_output, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    (out / "README.md").unlink()
    shutil.rmtree(out / "samples")
    assert main(["card", str(out)]) == 0
    assert validate_card(out) == []
    assert "card:" in capsys.readouterr().out


def test_publish_dry_run_lists_every_file_and_uploads_nothing(synth_output, capsys):
    assert main(["publish", str(synth_output), "--repo-id", "someone/demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: card is valid" in out
    assert "-> someone/demo:README.md" in out and "-> someone/demo:data/SynthColor/train-00000.tar" in out
    assert ".lock" not in out


def test_publish_refuses_incomplete_or_invalid_datasets(synth_output, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="incomplete"):
        plan_upload(out, "someone/demo", private=False)
    manifest["complete"] = True
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "README.md").write_text("---\nlicense: mit\n---\nno card\n")
    with pytest.raises(PublishError, match="lacks 'configs'"):
        plan_upload(out, "someone/demo", private=False)


def test_publish_creates_a_dataset_repo_and_uploads_the_folder(synth_output):
    from unittest.mock import create_autospec

    from huggingface_hub import HfApi

    # An autospec has HfApi's real signatures: a wrong keyword or a missing argument fails here as it would
    # against the Hub.
    api = create_autospec(HfApi, instance=True)
    api.create_repo.return_value = "https://huggingface.co/datasets/someone/demo"
    url = publish(plan_upload(synth_output, "someone/demo", private=True), api=api)
    assert url == "https://huggingface.co/datasets/someone/demo"
    api.create_repo.assert_called_once_with("someone/demo", repo_type="dataset", private=True, exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert upload["folder_path"] == synth_output and upload["repo_type"] == "dataset"
    assert {".lock", "work/*", "cache/*"} <= set(upload["ignore_patterns"])


def test_publish_turns_hub_failures_into_one_clear_error(synth_output):
    from unittest.mock import create_autospec

    from huggingface_hub import HfApi

    api = create_autospec(HfApi, instance=True)
    api.create_repo.side_effect = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(PublishError, match="could not reach the Hugging Face Hub to publish someone/demo"):
        publish(plan_upload(synth_output, "someone/demo", private=False), api=api)


@pytest.mark.parametrize(("n", "label"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (2_500_000, "1M<n<10M")])
def test_size_categories(n, label):
    assert size_category(n) == label
