"""Filter throughput on CPU and run-wide dedup scaling, measured in one run.

    .venv/bin/python benchmarks/filters.py [--sizes 1000 10000 100000] [--images 32]

1. Samples (images) per second of each scoring stage, through the same stage code a run uses: text rules,
   QA rules, SSIM_a at 512 and 1024 px, CLIP with the tiny test model and with a randomly initialised
   ViT-B-32 (real size, so its speed is that of real weights), the signature of every dedup stage.
2. The time of each dedup stage's run-wide ``decide`` at 1k, 10k and 100k items (10% planted near
   duplicates), and the ratio 100k/10k, which stays near 10 when the index is sub-quadratic (a quadratic
   one would give 100). Embeddings are random unit vectors, the even case for hyperplane LSH: real
   embeddings cluster, which fills buckets unevenly and costs more candidates per query.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.dedup import EmbeddingDedup, ExactTextDedup, ImageHashDedup, MinHashDedup  # noqa: E402
from pipeline.record import SampleRecord  # noqa: E402
from tests.stage_helpers import run_stages, unit_for  # noqa: E402

WORDS = [f"w{i}" for i in range(3000)]


def per_second(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f}/s"


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def procedural_records(category: str, count: int) -> list[SampleRecord]:
    records, _ = run_stages([{"name": "procedural_scene", "params": {"image_size": 128}}], unit=unit_for(category, count))
    return records


def stage_throughput(images: int) -> list[tuple[str, str]]:
    rows = []
    records = procedural_records("SynthMultiChoice", images)
    for name, spec in [("text_rules (seed caption + description)", {"name": "text_rules"}),
                       ("qa_rules", {"name": "qa_rules"}),
                       ("dedup_minhash signatures", {"name": "dedup_minhash"}),
                       ("dedup_image_hash signatures (128 px)", {"name": "dedup_image_hash"}),
                       ("dedup_text signatures", {"name": "dedup_text"})]:
        copies = [SampleRecord.from_json_dict(r.to_json_dict(), image=r.image) for r in records]
        run_stages([spec], copies[:2])  # warm up: word lists, permutations, imports
        copies = [SampleRecord.from_json_dict(r.to_json_dict(), image=r.image) for r in records]
        _, seconds = timed(run_stages, [spec], copies)
        rows.append((name, per_second(len(copies), seconds)))
    rng = np.random.default_rng(0)
    for size in (512, 1024):
        count = max(2, images // (4 if size == 512 else 16))
        big = [SampleRecord(key=f"k_{i}", category="SynthColor", split="train", seed=i,
                            image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for i in range(count)]
        _, seconds = timed(run_stages, [{"name": "detail_score"}], big)
        rows.append((f"detail_score SSIM_a ({size} px, {count} images)", per_second(count, seconds)))
    rows += clip_throughput(records)
    return rows


def clip_throughput(records: list[SampleRecord]) -> list[tuple[str, str]]:
    import open_clip

    from filters.clip_backend import OpenClipBackend, OpenClipParams
    from generators.tiny_models import build_tiny_clip

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tiny = OpenClipBackend(OpenClipParams(model=f"local-dir:{build_tiny_clip(Path(folder) / 'clip')}"))
        images = [r.image for r in records]
        tiny.embed_images(images[:2])
        _, seconds = timed(tiny.embed_images, images)
        rows.append(("clip_score images, tiny open_clip (32 px)", per_second(len(images), seconds)))
    base = OpenClipBackend.__new__(OpenClipBackend)  # ViT-B-32 with random weights: real size, no download
    base.device = "cpu"
    base.model, _, base.preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    base.model.eval()
    base.tokenizer = open_clip.get_tokenizer("ViT-B-32")
    batch = images[:16]
    base.embed_images(batch[:2])
    _, seconds = timed(base.embed_images, batch)
    rows.append(("clip_score images, ViT-B-32 random weights (224 px)", per_second(len(batch), seconds)))
    texts = [r.description for r in records[:16]]
    _, seconds = timed(base.embed_texts, texts)
    rows.append(("clip_score texts, ViT-B-32 random weights", per_second(len(texts), seconds)))
    return rows


def planted(n: int, make, perturb, seed: int = 0) -> list[tuple[str, object]]:
    """n items in key order, 10% of them near copies of an earlier item."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        value = perturb(items[rng.randrange(len(items))][1], rng) if items and rng.random() < 0.1 else make(rng)
        items.append((f"synthcolor_train_{i:07d}", value))
    return items


def text_items(n: int) -> list[tuple[str, str]]:
    def make(rng):
        return " ".join(rng.choice(WORDS) for _ in range(30))

    def perturb(text, rng):
        words = text.split()
        words[rng.randrange(len(words))] = rng.choice(WORDS)
        return " ".join(words)

    return planted(n, make, perturb)


def dedup_signatures(n: int) -> dict[str, tuple[object, list[tuple[str, bytes]]]]:
    texts = text_items(n)
    exact = ExactTextDedup("dedup_text", ExactTextDedup.Params(), None)
    exact_sigs = [(k, hashlib.sha256(t.encode()).digest()[:16]) for k, t in texts]
    minhash = MinHashDedup("dedup_minhash", MinHashDedup.Params(), None)
    records = [SampleRecord(key=k, category="SynthColor", split="train", seed=0, description=t) for k, t in texts]
    minhash_sigs = list(zip([k for k, _ in texts], minhash.signatures(records, None), strict=True))

    def bits(rng):
        return np.array([rng.random() < 0.5 for _ in range(64 + 42)])

    def flip(value, rng):
        value = value.copy()
        value[rng.randrange(64)] ^= True
        return value

    image = ImageHashDedup("dedup_image_hash", ImageHashDedup.Params(), None)
    image_sigs = [(k, np.packbits(v).tobytes()) for k, v in planted(n, bits, flip)]
    vectors_rng = np.random.default_rng(0)

    def vector(rng):
        v = vectors_rng.standard_normal(384).astype(np.float32)
        return v / np.linalg.norm(v)

    def nudge(v, rng):
        w = v + 0.01 * vectors_rng.standard_normal(384).astype(np.float32)
        return w / np.linalg.norm(w)

    embedding = EmbeddingDedup("dedup_embedding", EmbeddingDedup.Params(model="minilm"), None)
    embedding_sigs = [(k, v.astype(np.float16).tobytes()) for k, v in planted(n, vector, nudge)]
    return {"dedup_text (exact, sha256)": (exact, exact_sigs),
            "dedup_minhash (MinHash LSH, 128 perm)": (minhash, minhash_sigs),
            "dedup_image_hash (pHash + colour, d<=4)": (image, image_sigs),
            "dedup_embedding (384-d, cosine LSH)": (embedding, embedding_sigs)}


def dedup_scaling(sizes: list[int]) -> None:
    print(f"\n{'run-wide decide':44s}" + "".join(f"{n:>12,}" for n in sizes) + "   ratio  MiB/1k kept")
    timings: dict[str, list[float]] = {}
    removed: dict[str, list[int]] = {}
    memory: dict[str, float] = {}
    for n in sizes:
        for name, (stage, signatures) in dedup_signatures(n).items():
            decision, seconds = timed(stage.decide, iter(signatures))
            timings.setdefault(name, []).append(seconds)
            removed.setdefault(name, []).append(len(decision))
            if n == sizes[len(sizes) // 2]:  # tracemalloc slows allocation: memory is measured apart, once
                tracemalloc.start()
                stage.decide(iter(signatures))
                memory[name] = tracemalloc.get_traced_memory()[1] / 2**20 / ((n - len(decision)) / 1000)
                tracemalloc.stop()
    for name, values in timings.items():
        ratio = values[-1] / values[-2] if len(values) > 1 else float("nan")
        print(f"{name:44s}" + "".join(f"{v:11.2f}s" for v in values) + f"  {ratio:6.1f}  {memory[name]:8.2f}")
    print("removed as duplicates: " + "; ".join(f"{name.split()[0]} {r}" for name, r in removed.items()))
    print(f"(ratio: time at {sizes[-1]:,} / time at {sizes[-2]:,}: 10 is linear, 100 quadratic; memory: peak of the "
          f"decision at {sizes[len(sizes) // 2]:,} items traced by tracemalloc, per 1,000 kept samples)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--images", type=int, default=32, help="samples per throughput measurement")
    args = parser.parse_args()
    import torch

    print(f"CPU threads: {torch.get_num_threads()}; the machine may be shared, so compare numbers of one run")
    print(f"\n{'scoring stage (CPU)':56s} samples or images per second")
    for name, rate in stage_throughput(args.images):
        print(f"{name:56s} {rate}")
    dedup_scaling(args.sizes)


if __name__ == "__main__":
    main()
