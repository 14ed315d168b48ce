"""The training loop in one process: exact resume, checkpoints that load for inference, fp32 masters under bf16
presets, parameter groups and schedule, crash-safe checkpoint folders, metrics."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from model.fusion import FusionModel
from train.checkpoint import CHECKPOINTS_DIR, resolve_checkpoint
from train.config import load_train_config
from train.metrics import read_metrics
from train.trainer import train


def tiny(*overrides: str):
    return load_train_config("tiny", list(overrides))


def weights(checkpoint) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint / "model.safetensors")


def test_resume_continues_exactly(small_dataset, tmp_path):
    # one micro-batch per step and two loader workers: the checkpoint falls between the workers' turns
    config = tiny("max_steps=6", "batch.global_batch=2", "data.num_workers=2", "checkpoint.every_steps=3")
    straight = train(config, tmp_path / "straight", data=str(small_dataset))
    first = train(config, tmp_path / "resumed", data=str(small_dataset), stop_after=3)
    assert first.steps == 3
    resumed = train(config, tmp_path / "resumed", data=str(small_dataset), resume="latest")
    assert resumed.steps == straight.steps == 6

    def losses(result):
        return [(r["step"], r["loss"], r["lm_loss"], r["latent_count"]) for r in read_metrics(result.metrics)]

    assert losses(resumed) == losses(straight)  # the same steps, batches, Q draws and losses
    assert len({loss for _, loss, _, _ in losses(straight)}) > 1
    a, b = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    optimizer_a = torch.load(straight.checkpoint / "optimizer.pt", weights_only=True)["state"]
    optimizer_b = torch.load(resumed.checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(optimizer_a[i]["exp_avg"], optimizer_b[i]["exp_avg"]) for i in optimizer_a)
    state = json.loads((resumed.checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6


def test_a_checkpoint_loads_for_inference_with_dtype_and_device(small_dataset, tmp_path):
    result = train(tiny("max_steps=2"), tmp_path / "run", data=str(small_dataset))
    model = FusionModel.from_pretrained(result.checkpoint, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    from tests.tiny_models import make_image

    answers = model.generate([make_image(0), None], [[{"from": "human", "value": "<image>\nWhat colour?"}],
                                                     [{"from": "human", "value": "Count."}]], max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        FusionModel.from_pretrained(tmp_path / "run")


def test_bf16_presets_train_with_float32_masters_and_optimizer_state(small_dataset, tmp_path):
    config = tiny("max_steps=1", "model.overrides.language_model.dtype=bfloat16",
                  "model.overrides.vision_tower.dtype=bfloat16")
    result = train(config, tmp_path / "run", data=str(small_dataset))
    assert {t.dtype for t in weights(result.checkpoint).values()} == {torch.float32}
    state = torch.load(result.checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert {s["exp_avg"].dtype for s in state.values()} == {torch.float32}


def test_parameter_groups_follow_the_components_and_the_schedule_warms_up_then_decays(tiny_model):
    from train.config import OptimSection
    from train.optim import build_optimizer, lr_factor

    optimizer = build_optimizer(tiny_model, OptimSection(lr=1e-5, vision_lr=1e-6, weight_decay=0.0))
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"language_model": 1e-5, "vision_tower": 1e-6, "mm_projector": 1e-5, "aux_projector": 1e-5,
                   "interaction_layers": 1e-5}
    assert all(group["weight_decay"] == 0.0 for group in optimizer.param_groups)
    assert optimizer.defaults["fused"]  # torch's fused AdamW on CPU too, not its per-tensor loop
    factors = [lr_factor(step, 100, 3, "cosine", 0.0) for step in range(100)]
    assert factors[:3] == [1 / 3, 2 / 3, 1.0] and factors[3] == 1.0
    assert all(a >= b for a, b in zip(factors[3:], factors[4:])) and factors[-1] < 0.01


def test_one_process_skips_the_placeholder_passes_only_ranks_need(small_dataset, tmp_path, monkeypatch):
    calls = []
    for name in ("_placeholder_vision_pass", "_placeholder_text_pass"):
        original = getattr(FusionModel, name)
        monkeypatch.setattr(FusionModel, name, lambda self, *a, _name=name, _original=original:
                            calls.append(_name) or _original(self, *a))
    train(tiny("max_steps=3"), tmp_path / "run", data=str(small_dataset))
    assert calls == []  # DDP and FSDP need them (tests/train/test_distributed.py); one process does not


def test_a_half_written_checkpoint_is_never_resumed(small_dataset, tmp_path):
    result = train(tiny("max_steps=2"), tmp_path / "run", data=str(small_dataset))
    root = tmp_path / "run" / CHECKPOINTS_DIR
    (root / "step-00000009.tmp-deadbeef").mkdir()  # a crash during a later save
    (root / "step-00000009.tmp-deadbeef" / "model.safetensors").write_bytes(b"partial")
    assert resolve_checkpoint(tmp_path / "run", "latest") == result.checkpoint
    (root / "latest").write_text("step-00000077\n")  # a pointer to nothing falls back to the newest complete one
    assert resolve_checkpoint(tmp_path / "run", "latest") == result.checkpoint
    assert resolve_checkpoint(tmp_path / "fresh", "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path / "run", "step-00000009.tmp-deadbeef")


def test_metrics_have_throughput_flops_and_data_counts(small_dataset, tmp_path):
    result = train(tiny("max_steps=3"), tmp_path / "run", data=str(small_dataset))
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert record["tokens_per_second"] > 0 and record["samples_per_second"] > 0 and record["tflops"] > 0
        assert 0 < record["mfu"] and record["samples"] == 4 and record["data/bad"] == 0
        assert record["lr/vision_tower"] > 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "train_config.yaml").is_file()


def test_fusion_train_command(small_dataset, tmp_path, capsys):
    from jobs.cli import main

    code = main(["train", "--config", "tiny", "--data", str(small_dataset), "--out", str(tmp_path / "cli"),
                 "--set", "max_steps=2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 2/2 steps" in printed and "step-00000002" in printed
    assert main(["train", "--config", "tiny", "--data", str(small_dataset), "--out", str(tmp_path / "bad"),
                 "--set", "batch.global_batch=3"]) == 2  # an error naming the fields, not a traceback
    assert "batch.global_batch=3 is not a multiple" in capsys.readouterr().err


def test_length_grouping_with_one_micro_batch_per_step_is_warned_about(small_dataset, tmp_path, caplog):
    # sorted micro-batches hold one length band each: with one per step, every update sees one kind of sample
    single = tiny("max_steps=1", "batch.global_batch=2", "batch.micro_batch=2", "data.length_group=4")
    with caplog.at_level("WARNING", logger="train.trainer"):
        train(single, tmp_path / "single", data=str(small_dataset))
    assert "one micro-batch per optimizer step" in caplog.text
    caplog.clear()
    mixed = tiny("max_steps=1", "batch.global_batch=4", "batch.micro_batch=2", "data.length_group=4")
    with caplog.at_level("WARNING", logger="train.trainer"):
        train(mixed, tmp_path / "mixed", data=str(small_dataset))
    assert "one micro-batch per optimizer step" not in caplog.text
