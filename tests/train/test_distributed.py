"""torchrun with 2 CPU processes on gloo: DDP on uneven shards where one rank gets only text-only samples, and FSDP2
trained in two launches (stop, resume) matching the uninterrupted DDP run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.conftest import image_samples, text_samples, write_sizes, write_tar
from train.config import SourceSpec
from train.loader import slot_shards
from train.metrics import read_metrics
from train.sources import resolve_sources

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
STEPS = 4
COMMON = ["--config", "tiny", "--set", f"max_steps={STEPS}", "--set", "batch.global_batch=4",
          "--set", "log.tensorboard=false", "--set", "checkpoint.every_steps=2"]


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory) -> Path:
    """An image shard of 7 samples and a text-only shard of 3: with two ranks each reads one of them."""
    root = tmp_path_factory.mktemp("mixed")
    image = write_tar(root / "shards" / "image-00000.tar", image_samples("img", 7))
    text = write_tar(root / "shards" / "text-00000.tar", text_samples("txt", 3))
    write_sizes(root / "shards", [image, text], [7, 3])
    return root / "shards"


def run_logged(name: str, command: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess:
    """Run `command` from the repository, keep its output as tmp/<name>-<n>.log, and require success."""
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    (tmp / f"{name}-{len(list(tmp.glob(f'{name}-*')))}.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def torchrun(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return run_logged("torchrun", [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "jobs.train", *args],
                      env, tmp)


def fusion_train(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """The console script in a fresh process, as a user runs it (no torchrun)."""
    env = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}
    return run_logged("fusion-train", [str(Path(sys.executable).parent / "fusion"), "train", *args],
                      {**env, "TOKENIZERS_PARALLELISM": "false"}, tmp)


def test_local_ranks_start_from_the_model_warmed_once_before_them(small_dataset, tmp_path):
    out = tmp_path / "run"
    result = fusion_train(["--config", "tiny", "--data", str(small_dataset), "--out", str(out), "--set", "max_steps=2",
                           "--set", "batch.global_batch=4", "--set", "log.tensorboard=false", "--set", "local_ranks=2",
                           "--set", "vision_warmup={steps: 2, batch_size: 4, max_images: 20, answer_through_llm: true}",
                           "--set", "binding_warmup={steps: 2, batch_size: 4}"], tmp_path)
    logs = result.stdout + result.stderr
    assert "training on 2 local ranks" in logs
    # warmed once, in the command's process; the ranks (rank 0 logs) load that model and warm up no further
    assert logs.count("starting from the warmed model in") == 1
    assert logs.count("vision warm-up: 2 steps on") == 1 and logs.count("binding warm-up: 2 steps on") == 1
    assert (out / "vision_warmup.json").is_file() and (out / "binding_warmup.json").is_file()
    assert not (out / "warm-start").exists()  # dropped once the training ended
    state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"]) == (2, 2)


def test_ddp_and_fsdp2_on_two_processes(mixed_shards, tmp_path):
    data = str(mixed_shards / "*.tar")
    source = resolve_sources([SourceSpec(path=data)], seed=0)[0]

    def text_rank(epoch: int) -> int:
        """The rank the seeded shard split gives the text-only shard to (the loader's own function)."""
        return next(rank for rank in (0, 1) if "text" in slot_shards(source, seed=0, epoch=epoch, slot=rank,
                                                                      slots=2, resampled=False)[0][0].url)

    ddp = tmp_path / "ddp"
    torchrun([*COMMON, "--data", data, "--out", str(ddp), "--set", "strategy=ddp"], tmp_path)
    state = json.loads((ddp / "checkpoints" / f"step-{STEPS:08d}" / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 2 and state["strategy"] == "ddp"
    positions = state["loader"]
    # 10 samples, global batch 4: 3 steps per epoch, so step 4 is the first of epoch 1, on both ranks alike
    assert [(p["epoch"], p["batches"]) for p in positions] == [(1, 1), (1, 1)]
    rank = text_rank(positions[0]["epoch"])
    text_counts = positions[rank]["workers"]["0"]["counts"]
    image_counts = positions[1 - rank]["workers"]["0"]["counts"]
    assert text_counts.get("text_only_samples", 0) > 0 and "image_samples" not in text_counts  # text only
    assert image_counts.get("image_samples", 0) > 0 and "text_only_samples" not in image_counts

    # `local_ranks: 2` without torchrun: the command starts the two ranks itself, the same DDP training
    local = tmp_path / "local"
    fusion_train([*COMMON, "--data", data, "--out", str(local), "--set", "local_ranks=2"], tmp_path)
    local_state = json.loads((local / "checkpoints" / f"step-{STEPS:08d}" / "trainer_state.json").read_text())
    assert (local_state["world_size"], local_state["strategy"]) == (2, "ddp")
    assert ([(r["step"], r["loss"]) for r in read_metrics(local / "metrics.jsonl")]
            == [(r["step"], r["loss"]) for r in read_metrics(ddp / "metrics.jsonl")])

    fsdp = tmp_path / "fsdp"
    torchrun([*COMMON, "--data", data, "--out", str(fsdp), "--set", "strategy=fsdp", "--stop-after", "2"], tmp_path)
    halfway = fsdp / "checkpoints" / "step-00000002"
    assert list(halfway.glob("model-*-of-*.safetensors")) and (halfway / "optimizer").is_dir()
    torchrun([*COMMON, "--data", data, "--out", str(fsdp), "--set", "strategy=fsdp", "--resume", "latest"], tmp_path)

    ddp_losses = [(r["step"], r["loss"]) for r in read_metrics(ddp / "metrics.jsonl")]
    fsdp_losses = [(r["step"], r["loss"]) for r in read_metrics(fsdp / "metrics.jsonl")]
    assert [s for s, _ in fsdp_losses] == [s for s, _ in ddp_losses] == list(range(1, STEPS + 1))
    # the resumed FSDP run follows the uninterrupted DDP run: same batches, same updates up to float rounding
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(ddp_losses, fsdp_losses))

    from model.fusion import FusionModel

    final = fsdp / "checkpoints" / f"step-{STEPS:08d}"
    fsdp_model = FusionModel.from_pretrained(final)  # the DCP safetensors load for inference
    ddp_model = FusionModel.from_pretrained(ddp / "checkpoints" / f"step-{STEPS:08d}")
    # An attention key bias adds q.b to every logit of a query alike, so softmax cancels it and its exact gradient
    # is zero: what it holds after Adam is rounding noise divided by (|noise| + eps), which differs between DDP's and
    # FSDP's summation orders (seen: the ViT's k_proj.bias, values ~1e-6, apart by more than 1e-5).
    compared = [(name, a, b) for (name, a), (_, b) in zip(ddp_model.state_dict().items(),
                                                          fsdp_model.state_dict().items())
                if not name.endswith("k_proj.bias")]
    assert len(compared) > 100
    assert [name for name, a, b in compared if not torch.allclose(a, b, atol=1e-5)] == []
