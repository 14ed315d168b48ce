from jobs.cli import main


def test_bad_config_exits_2_naming_field_and_file(tmp_path, capsys):
    code = main(["synth", "--config", "demo", "--out", str(tmp_path / "x"), "--set", "dataset.unit_size=-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "configs/demo.yaml" in err and "dataset.unit_size" in err and "greater than or equal to 1" in err
    assert not (tmp_path / "x").exists()


def test_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["card", str(tmp_path / "nothing")]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_synth_without_ray_prints_where_dataset_and_card_are(tmp_path, capsys):
    out = tmp_path / "tiny"
    code = main(["synth", "--config", "demo", "--out", str(out), "--no-ray", "--set", "ray.progress=false",
                 "--set", "categories={SynthColor: {train: 3, test: 2}}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"dataset: {out} (5 samples kept, 0 rejected; 2 units run, 0 already complete)" in printed
    assert f"card:    {out / 'README.md'}" in printed


# --- every command as a user runs it: the console script, a fresh process each time ---------------------------

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

FUSION = str(Path(sys.executable).parent / "fusion")
REPO = Path(__file__).resolve().parents[2]


def fusion(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([FUSION, *args], capture_output=True, text=True, env=environment, timeout=timeout, cwd=REPO)


def one_clear_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_every_command_works_or_fails_clearly_in_a_fresh_process(synth_output, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    version = fusion("--version")
    assert version.returncode == 0 and version.stdout.startswith("fusion 0.1.0 (code ")

    card = fusion("card", str(out))
    assert card.returncode == 0, card.stderr[-3000:]
    assert f"card: {out / 'README.md'}" in card.stdout

    dry = fusion("publish", str(out), "--repo-id", "someone/demo", "--dry-run")
    assert dry.returncode == 0 and "dry run: card is valid" in dry.stdout

    offline = fusion("publish", str(out), "--repo-id", "someone/demo", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "HF_HUB_OFFLINE is set" in one_clear_line(offline)
    unreachable = fusion("publish", str(out), "--repo-id", "someone/demo",
                         env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_x"})
    assert unreachable.returncode == 1 and "could not reach the Hugging Face Hub" in one_clear_line(unreachable)

    resume = fusion("synth", "--config", str(out / "config.yaml"), "--out", str(out), "--no-ray")
    assert resume.returncode == 0 and "0 units run, 28 already complete" in resume.stdout

    plan = fusion("plan", "--config", str(out / "config.yaml"), "--from-run", str(out), "--target", "1000")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "projection for 1,000 accepted samples, from the run in" in plan.stdout and "procedural_scene" in plan.stdout

    cleared = fusion("cache", "clear", str(out))
    assert cleared.returncode == 0 and "removed 0 cache file(s)" in cleared.stdout

    missing = fusion("card", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "manifest.json not found" in one_clear_line(missing)
    bad = fusion("synth", "--config", "demo", "--out", str(tmp_path / "x"), "--set", "stages.0.resources.num_gpus=-1")
    assert bad.returncode == 2 and one_clear_line(bad) == "error: invalid config"
    assert "configs/demo.yaml: field 'stages.0.resources.num_gpus'" in bad.stderr


def test_a_gpu_stage_on_a_cpu_only_ray_fails_at_once_naming_the_stage(tmp_path):
    result = fusion("synth", "--config", "demo", "--out", str(tmp_path / "gpu"), "--set", "ray.num_cpus=2",
                    "--set", "ray.num_gpus=0", "--set", "plugins=[tests.synthesis.plugin_stages]",
                    "--set", "stages=[{name: procedural_scene}, {name: test_sleep, id: describe, "
                             "resources: {num_gpus: 1, concurrency: 2}}]",
                    "--set", "categories={SynthColor: {train: 4}}")
    line = one_clear_line(result)
    assert result.returncode == 1
    assert "stage 'describe' asks for 2 actor(s) with CPU=1, GPU=1: GPU 2 needed, the cluster has 2 CPUs and 0 GPUs" \
        in result.stderr, line
    assert not list((tmp_path / "gpu").glob("work/*/*_stats.json"))  # failed before any work


def test_make_tiny_models_writes_folders_that_load_like_real_ones(tmp_path):
    result = fusion("make-tiny-models", str(tmp_path / "models"))
    assert result.returncode == 0, result.stderr[-3000:]
    import open_clip
    from diffusers import AutoPipelineForText2Image
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models/llm")
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "models/llm").config.num_hidden_layers == 2
    pipeline = AutoPipelineForText2Image.from_pretrained(tmp_path / "models/diffusion")
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'models/clip'}")
    assert model.visual.image_size == (32, 32)
