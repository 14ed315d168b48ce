"""Sampling with one ``torch.Generator`` per row of a batched ``generate``.

transformers' own sampling draws every row from one global RNG, so a sample's text would depend on what
else shares its batch. This processor runs last: it applies each row's temperature and top-p, draws the
row's token from the row's own generator, and leaves only that token (greedy decoding then picks it). It
also ends each row at its own ``max_new_tokens`` (the caller sees the cut: no end token within the limit).
"""

from __future__ import annotations

import torch


class PerRowSampler:
    def __init__(self, seeds: list[int], temperatures: list[float], top_ps: list[float], max_new_tokens: list[int],
                 prompt_length: int, eos_token_id: int) -> None:
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.temperatures = temperatures
        self.top_ps = top_ps
        self.limits = max_new_tokens
        self.prompt_length = prompt_length
        self.eos = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        logits = scores.detach().float().cpu()
        for row in range(scores.shape[0]):
            if step >= self.limits[row]:
                chosen[row] = self.eos
            elif self.temperatures[row] == 0:
                chosen[row] = int(torch.argmax(logits[row]))
            else:
                chosen[row] = self._draw(logits[row], row)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), chosen.to(scores.device)] = 0.0
        return out

    def _draw(self, logits: torch.Tensor, row: int) -> int:
        probs = torch.softmax(logits / self.temperatures[row], dim=-1)
        if self.top_ps[row] < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(ordered, dim=-1) - ordered < self.top_ps[row]  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        if not torch.isfinite(probs).all() or probs.sum() <= 0:  # every token masked: end the row
            return self.eos
        return int(torch.multinomial(probs, 1, generator=self.generators[row]))
