"""The lmms-eval harness runs a tiny FUSION checkpoint through the registered adapter on the local held-out task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="the eval extra (`pip install -e '.[eval]'`) provides lmms-eval")

REPO = Path(__file__).resolve().parents[2]


def test_lmms_eval_scores_a_checkpoint_on_the_local_held_out_task(small_dataset, tmp_path):
    from model.fusion import FusionModel
    from train.config import load_train_config
    from train.lmms_task import TASK_NAME, export_task
    from train.scoring import score
    from train.trainer import train

    checkpoint = train(load_train_config("tiny", ["max_steps=2"]), tmp_path / "run", data=str(small_dataset)).checkpoint
    task_dir = tmp_path / "task"
    export_task(str(small_dataset), task_dir, max_per_category=2)
    out = tmp_path / "lmms"
    command = [sys.executable, "-m", "lmms_eval", "--model", "fusion", "--model_args", f"pretrained={checkpoint}",
               "--tasks", TASK_NAME, "--include_path", str(task_dir), "--batch_size", "4", "--log_samples",
               "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    (results_file,) = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"][TASK_NAME]["effective"] > 0
    reported = results["results"][TASK_NAME]["score,none"]
    (samples_file,) = out.rglob(f"*_samples_{TASK_NAME}.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    # the harness asked the adapter, and the adapter answered what the model answers on its own
    model = FusionModel.from_pretrained(checkpoint)
    import datasets
    import yaml

    docs = datasets.load_from_disk(str(task_dir / "data"))["test"]
    text = (task_dir / f"{TASK_NAME}.yaml").read_text().replace("!function", "")
    max_new_tokens = yaml.safe_load(text)["generation_kwargs"]["max_new_tokens"]
    for sample in samples[:3]:
        doc = docs[sample["doc_id"]]
        own = model.generate([doc["image"].convert("RGB")], [[{"from": "human", "value": f"<image>\n{doc['question']}"}]],
                             max_new_tokens=max_new_tokens)[0]
        assert sample["filtered_resps"] == own
    mean = sum(score(docs[s["doc_id"]]["kind"], s["filtered_resps"], docs[s["doc_id"]]["reference"],
                     docs[s["doc_id"]]["options"].split("|") if docs[s["doc_id"]]["options"] else [])
               for s in samples) / len(samples)
    assert abs(mean - reported) < 1e-9


def test_the_adapters_loglikelihood_is_the_models_answer_likelihood(tiny_fusion_config, tmp_path):
    import torch
    from lmms_eval.api.instance import Instance

    from model.fusion import FusionModel
    from train.lmms_eval_model import FusionLmms

    torch.manual_seed(0)
    FusionModel.from_config(tiny_fusion_config).save_pretrained(tmp_path / "model")
    adapter = FusionLmms(pretrained=str(tmp_path / "model"), batch_size=2)
    contexts = [("Count the balloons.", "Seven balloons."), ("What is two plus two?", "Four"),
                ("Name a colour.", "red")]
    requests = [Instance("loglikelihood", (context, target, None, index, "task", "test"), index,
                         {"task": "task", "doc_id": index, "repeats": 1})
                for index, (context, target) in enumerate(contexts)]
    answered = adapter.loglikelihood(requests)
    own = adapter.model.answer_log_likelihoods(
        [None] * 3, [[{"from": "human", "value": c}, {"from": "gpt", "value": t}] for c, t in contexts])
    assert [a[0] for a in answered] == pytest.approx([o.log_probability for o in own], abs=1e-4)
    assert [a[1] for a in answered] == [o.greedy for o in own]
    assert all(a[0] < 0 for a in answered)
