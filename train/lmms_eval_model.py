"""The lmms-eval model adapter: `lmms-eval --model fusion --model_args pretrained=CHECKPOINT[,device=cuda,dtype=bfloat16]`.

Registered through the `lmms_eval.models` entry point (train/lmms_registration.py), so lmms-eval runs our
checkpoints on our held-out task (train/lmms_task.py) and, with the benchmark data, on MME, MMBench, POPE and the rest.
Greedy generation, batched with left padding; Q fixed to the config's evaluation latent count.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from model.fusion import FusionModel


class FusionLmms(lmms):
    def __init__(self, pretrained: str, device: str = "cpu", dtype: str | None = None, batch_size: int | str = 8,
                 max_new_tokens: int = 64, **kwargs) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"unknown --model_args for fusion: {sorted(kwargs)}")
        self.model = FusionModel.from_pretrained(pretrained, dtype=dtype, device=device)
        self.device = torch.device(device)
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _visual(self, doc_to_visual, doc_id, task, split):
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        return visuals[0].convert("RGB") if visuals else None  # FUSION takes one image per sample

    @staticmethod
    def _conversation(context: str, has_image: bool) -> list[dict[str, str]]:
        return [{"from": "human", "value": ("<image>\n" if has_image else "") + context}]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str] = [""] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].args[0]))
        bar = tqdm(total=len(requests), desc="fusion generate", disable=self.rank != 0)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            images, conversations, limits, stops = [], [], [], []
            for index in chunk:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[index].args
                image = self._visual(doc_to_visual, doc_id, task, split)
                images.append(image)
                conversations.append(self._conversation(context, image is not None))
                limits.append(int(gen_kwargs.get("max_new_tokens", self.default_max_new_tokens)))
                until = gen_kwargs.get("until") or []
                stops.append([until] if isinstance(until, str) else list(until))
            texts = self.model.generate(images, conversations, max_new_tokens=max(limits))
            for index, text, until in zip(chunk, texts, stops, strict=True):
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                answers[index] = text
            bar.update(len(chunk))
        bar.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        images, conversations = [], []
        for request in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(
                self.task_dict[task][split][doc_id])
            image = self._visual(doc_to_visual, doc_id, task, split)
            images.append(image)
            conversations.append([*self._conversation(context, image is not None), {"from": "gpt", "value": target}])
        scored = self.model.answer_log_likelihoods(images, conversations, batch_size=self.batch_size_per_gpu)
        return [(s.log_probability, s.greedy) for s in scored]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("FUSION's lmms-eval adapter answers single-round requests")
