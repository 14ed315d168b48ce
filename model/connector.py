"""The two-layer MLP projectors between vision space (C) and LLM space (D).

mm projector (vision -> text): Linear(3C or C -> D) -> GELU -> Linear(D -> D); shared by the full view, the tiles
and the rebuilt question text.
aux projector (text -> vision): Linear(D -> C) -> GELU -> Linear(C -> C); projects question embeddings into the ViT
and rebuilds patch embeddings for the DSM loss.
"""

from __future__ import annotations

from torch import nn


class MlpProjector(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(
            nn.Linear(in_features, out_features),
            nn.GELU(),
            nn.Linear(out_features, out_features),
        )
        self.in_features = in_features
        self.out_features = out_features
