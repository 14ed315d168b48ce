"""lmms-eval entry point (`lmms_eval.models` group): registers `--model fusion` without importing torch."""

from __future__ import annotations


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="fusion", simple_class_path="train.lmms_eval_model.FusionLmms")
