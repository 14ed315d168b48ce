"""Does a trained demo model use the image? Checkpoints side by side, on the held-out split of a demo dataset.

Per family, on its first held-out samples:
- the answer loss with each sample's own image and with another sample's image of the same batch: a model that
  reads the image has a lower loss with its own;
- with TUNE, the cosine between the tower's patch features beside the sample's ViT text and without any text:
  how much the questions' text moves the patches the decoder sees.
And whether the objects' colours reach the decoder at all: a linear probe, fitted on two thirds of the held-out
object centres and scored on the rest, reads each object's colour from the tower's output and from the image
tokens the decoder is given (the projector's output).

Run: python benchmarks/demo_image_use.py --data outputs/demo/dataset outputs/demo/train [OTHER_RUN ...]
(a training run folder means its newest checkpoint; about 30 s per checkpoint)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.procedural.labels import NO_CENTRE  # noqa: E402
from model.fusion import FusionModel  # noqa: E402
from pipeline.record import SampleRecord  # noqa: E402
from train.checkpoint import resolve_checkpoint  # noqa: E402
from train.config import SourceSpec  # noqa: E402
from train.loader import image_member, shard_samples  # noqa: E402
from train.sources import list_shards, resolve_sources  # noqa: E402
from train.vision_warmup import WarmupExample, patch_features, tower_features, warmup_examples  # noqa: E402

FAMILIES = ("SynthColor", "SynthCount", "SynthConvShort", "SynthMultiChoice")
BATCH = 8


def held_out(data: str, family: str, count: int) -> list[tuple[list[dict[str, str]], bytes]]:
    samples = []
    for shard in list_shards(SourceSpec(path=data, split="test", categories=[family])):
        for _, raw in shard_samples(shard, Counter()):
            record = SampleRecord.from_json_dict(json.loads(raw["json"]))
            samples.append((record.conversations, image_member(raw)))
            if len(samples) == count:
                return samples
    if not samples:
        raise SystemExit(f"--data {data}: no held-out sample of {family}")
    return samples


@torch.no_grad()
def image_use(model: FusionModel, samples: list[tuple[list[dict[str, str]], bytes]]) -> dict[str, float]:
    builder = model.sequence_builder
    latent_count = builder.latent_count(for_generation=True)
    losses = {"own": 0.0, "other": 0.0}
    tokens = 0
    cosines = []
    for start in range(0, len(samples), BATCH):
        chunk = samples[start:start + BATCH]
        pixels = [builder.image_processor(Image.open(io.BytesIO(image)).convert("RGB")) for _, image in chunk]
        encoded = [builder.assemble(builder.tokenize(conversation, has_image=True), has_image=True,
                                    latent_count=latent_count) for conversation, _ in chunk]
        for mode in losses:
            shift = 0 if mode == "own" else 1  # "other": the next sample's image
            items = [dataclasses.replace(item, pixel_values=pixels[(index + shift) % len(chunk)])
                     for index, item in enumerate(encoded)]
            batch = builder.pad(items, latent_count=latent_count, for_generation=False)
            losses[mode] += float(model(batch, loss_chunk_tokens=4096).lm_loss_sum)
        tokens += int((batch.labels != -100).sum())
        if model.config.use_tune:
            full_views = torch.stack([views[-1] for views in pixels])
            guided = patch_features(model, full_views, [item.vit_text_ids for item in encoded])
            alone = patch_features(model, full_views, [[] for _ in encoded])
            cosines.append(torch.nn.functional.cosine_similarity(guided, alone, dim=-1).mean())
    result = {mode: total / tokens for mode, total in losses.items()}
    result["cosine"] = float(torch.stack(cosines).mean()) if cosines else float("nan")
    return result


@torch.no_grad()
def centre_colours(model: FusionModel,
                   examples: list[WarmupExample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At every object centre of the examples: the tower's features, the decoder's image token and the colour."""
    tower, tokens, colours = [], [], []
    for start in range(0, len(examples), 64):
        chunk = examples[start:start + 64]
        features = tower_features(model, chunk)
        centred = torch.stack([e.centre_shapes for e in chunk]) != NO_CENTRE
        tower.append(features[centred])
        tokens.append(model.mm_projector(features)[centred])
        colours.append(torch.stack([e.colour_shares for e in chunk]).argmax(-1)[centred])
    return torch.cat(tower), torch.cat(tokens), torch.cat(colours)


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, steps: int = 500) -> float:
    """Held-out accuracy of a linear softmax probe fitted on the first two thirds (features standardised)."""
    cut = len(labels) * 2 // 3
    mean, std = features[:cut].mean(0), features[:cut].std(0) + 1e-6
    features = (features - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = torch.nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(features[:cut]), labels[:cut]).backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe(features[cut:]).argmax(-1) == labels[cut:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="training run or checkpoint folders")
    parser.add_argument("--data", default="outputs/demo/dataset", help="a demo dataset folder with a test split")
    parser.add_argument("--samples", type=int, default=48, help="held-out samples per family")
    parser.add_argument("--probe-images", type=int, default=1200, help="held-out images for the colour probe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = {family: held_out(args.data, family, args.samples) for family in FAMILIES}
    print(f"answer loss with the sample's own image / another sample's image; cosine of the patch features beside "
          f"the ViT text to those without ({args.samples} held-out samples per family)")
    print(f"{'checkpoint':44s} {'family':18s} {'own':>7s} {'other':>7s} {'other/own':>10s} {'cosine':>7s}")
    for run in args.runs:
        checkpoint = resolve_checkpoint(Path(run), "latest") if (Path(run) / "checkpoints").is_dir() else Path(run)
        model = FusionModel.from_pretrained(checkpoint).eval()
        for family, samples in data.items():
            scores = image_use(model, samples)
            print(f"{str(checkpoint)[-44:]:44s} {family:18s} {scores['own']:7.3f} {scores['other']:7.3f} "
                  f"{scores['other'] / scores['own']:10.2f} {scores['cosine']:7.3f}", flush=True)
        examples, _ = warmup_examples(model, resolve_sources([SourceSpec(path=args.data, split="test")], 0),
                                      args.probe_images)
        tower, tokens, colours = centre_colours(model, examples)
        scored = colours[len(colours) * 2 // 3:]  # the probe's held-out third
        majority = float(torch.bincount(scored).max()) / len(scored)
        print(f"{str(checkpoint)[-44:]:44s} colour at {len(colours)} object centres, linear probe: tower output "
              f"{probe_accuracy(tower, colours):.1%}, decoder's image tokens {probe_accuracy(tokens, colours):.1%} "
              f"(most common colour {majority:.1%})", flush=True)


if __name__ == "__main__":
    main()
