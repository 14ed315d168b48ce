"""Run-wide dedup stages: exact text, near text (MinHash LSH), images (perceptual hash) and embeddings.

Each computes a signature per record when its unit runs (stored with the unit), and after every round
``decide`` walks every accepted sample's signature in key order with one greedy rule: a sample is removed
if it is a duplicate of a sample kept before it, so the smallest key of each group is kept and the
decision is a pure function of the signatures (the same whatever the order units finished in, and after a
kill and resume). Top-up rounds add samples at new positions; the decision is simply made again over all of
them. Memory holds the index of kept samples only; signatures are streamed (README, "Filters").
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from typing import Literal

import numpy as np
from pydantic import Field

from filters.near_index import CosineLSHIndex, hamming_pairs
from filters.qa_verdicts import qa_pairs
from pipeline.record import SampleRecord
from pipeline.stage import GlobalStage, StageParams, UnitContext, register_stage

TextSource = Literal["description", "caption", "seed_caption", "text", "qa", "conversation"]
MINHASH_SCHEME = "affine32"  # datasketch 2's default: 32-bit hash values, no large-set bias
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation and whitespace runs as one space: what "the same text" means here."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def source_text(record: SampleRecord, source: str) -> str:
    """The text a dedup stage compares: a field, the QA pairs, or the whole conversation."""
    if source == "text":
        return record.text()
    if source == "qa":
        return "\n".join(f"{q}\n{a}" for q, a in qa_pairs(record))
    if source == "conversation":
        return "\n".join(turn["value"] for turn in record.conversations)
    return getattr(record, source)


class ExactTextParams(StageParams):
    source: TextSource = Field("description", description="What is compared, after normalize_text")


@register_stage("dedup_text")
class ExactTextDedup(GlobalStage):
    """Removes samples whose normalised text equals that of a smaller key (sha256 of it as signature)."""

    Params = ExactTextParams
    params: ExactTextParams

    def signatures(self, records: list[SampleRecord], unit: UnitContext) -> list[bytes]:
        return [hashlib.sha256(normalize_text(source_text(r, self.params.source)).encode()).digest()[:16]
                for r in records]

    def decide(self, signatures: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        first: dict[bytes, str] = {}
        removed = {}
        for key, signature in signatures:
            if signature in first:
                removed[key] = f"duplicate_{self.params.source}: same normalised text as {first[signature]}"
            else:
                first[signature] = key
        return removed


class MinHashParams(StageParams):
    source: TextSource = "description"
    threshold: float = Field(0.8, gt=0, lt=1, description="Estimated Jaccard similarity of shingle sets")
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_words: int = Field(3, ge=1, description="Word n-grams the sets are made of")
    seed: int = 1


def shingles(text: str, n: int) -> list[bytes]:
    words = normalize_text(text).split()
    if len(words) <= n:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


@register_stage("dedup_minhash")
class MinHashDedup(GlobalStage):
    """Near-duplicate text: datasketch MinHash of word shingles, MinHashLSH over the kept samples, each
    candidate confirmed by its estimated Jaccard similarity."""

    Params = MinHashParams
    params: MinHashParams

    def signatures(self, records: list[SampleRecord], unit: UnitContext) -> list[bytes]:
        from datasketch import MinHash

        p = self.params
        # Permutations drawn once: making them is most of the cost of a fresh MinHash.
        permutations = MinHash(num_perm=p.num_perm, seed=p.seed, scheme=MINHASH_SCHEME).permutations
        result = []
        for record in records:
            minhash = MinHash(num_perm=p.num_perm, seed=p.seed, scheme=MINHASH_SCHEME, permutations=permutations)
            minhash.update_batch(shingles(source_text(record, self.params.source), self.params.shingle_words))
            result.append(minhash.hashvalues.astype(np.uint32).tobytes())
        return result

    def decide(self, signatures: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        from datasketch import LeanMinHash, MinHashLSH

        p = self.params
        lsh = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm)
        kept: dict[str, np.ndarray] = {}
        removed = {}
        for key, signature in signatures:
            values = np.frombuffer(signature, dtype=np.uint32)
            minhash = LeanMinHash(seed=p.seed, hashvalues=values, scheme=MINHASH_SCHEME)
            best = None
            for other in sorted(lsh.query(minhash)):
                similarity = float(np.mean(kept[other] == values))
                if similarity >= p.threshold and (best is None or similarity > best[1]):
                    best = (other, similarity)
            if best:
                removed[key] = f"near_duplicate_{p.source}: jaccard~{best[1]:.2f} with {best[0]}"
            else:
                lsh.insert(key, minhash, check_duplication=False)
                kept[key] = values
        return removed


class ImageHashParams(StageParams):
    max_distance: int = Field(4, ge=0, le=32, description="Perceptual-hash bits that may differ (0: exact)")
    max_color_distance: int | None = Field(
        6, ge=0, description="Colour-hash bits that may differ too (pHash sees luminance only); null: ignore colour")
    hash_size: int = Field(8, ge=4, le=8, description="pHash side: hash_size**2 bits (at most 64)")


def image_hash_bits(image: np.ndarray, hash_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(pHash bits, colour-hash bits) of an RGB array (imagehash's DCT pHash and HSV colour histogram)."""
    import imagehash
    from PIL import Image

    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return (imagehash.phash(pil, hash_size=hash_size).hash.flatten(),
            imagehash.colorhash(pil, binbits=3).hash.flatten())


@register_stage("dedup_image_hash")
class ImageHashDedup(GlobalStage):
    """Exact and near-duplicate images by perceptual hash (imagehash), all pairs within ``max_distance``
    bits found exactly by multi-index hashing; the colour hash keeps recoloured scenes apart."""

    Params = ImageHashParams
    params: ImageHashParams

    def signatures(self, records: list[SampleRecord], unit: UnitContext) -> list[bytes]:
        result = []
        for record in records:
            if record.image is None:
                raise ValueError(f"{record.key} has no image to hash; is an image stage configured before?")
            phash, color = image_hash_bits(record.image, self.params.hash_size)
            result.append(np.packbits(np.concatenate([phash, color])).tobytes())
        return result

    def decide(self, signatures: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        p = self.params
        phash_bits = p.hash_size ** 2
        keys, phashes, colors = [], [], []
        for key, signature in signatures:  # 14 bytes a sample: all are held, and matched at once
            bits = np.unpackbits(np.frombuffer(signature, dtype=np.uint8))
            keys.append(key)
            phashes.append(_as_int(bits[:phash_bits]))
            colors.append(_as_int(bits[phash_bits:]))
        if phash_bits > 64:
            raise ValueError(f"hash_size {p.hash_size} gives {phash_bits} bits; the index takes at most 64 (hash_size 8)")
        later, earlier, distances = hamming_pairs(np.array(phashes, dtype=np.uint64), phash_bits, p.max_distance)
        near: dict[int, list[tuple[int, int]]] = {}
        for i, j, d in zip(later.tolist(), earlier.tolist(), distances.tolist(), strict=True):
            if p.max_color_distance is None or (colors[i] ^ colors[j]).bit_count() <= p.max_color_distance:
                near.setdefault(i, []).append((d, j))
        removed: dict[str, str] = {}
        kept = np.ones(len(keys), dtype=bool)
        for i in sorted(near):  # key order: a sample goes if it is near one kept before it
            match = min(((d, j) for d, j in near[i] if kept[j]), default=None)
            if match:
                kept[i] = False
                kind = "duplicate_image" if match[0] == 0 else "near_duplicate_image"
                removed[keys[i]] = f"{kind}: phash distance {match[0]} with {keys[match[1]]}"
        return removed


def _as_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits).tobytes(), "big") >> ((-len(bits)) % 8)


class EmbeddingParams(StageParams):
    model: str = Field(description="A model under `models:`: sentence_transformers for text, open_clip for text or images")
    source: Literal["image", "description", "caption", "seed_caption", "text", "qa", "conversation"] = "qa"
    threshold: float = Field(0.95, gt=-1, le=1, description="Cosine at or above which a sample is a near duplicate")
    tables: int = Field(24, ge=1, le=64, description="LSH tables: more find more pairs near the threshold")
    bits: int = Field(18, ge=4, le=32, description="Hyperplanes per table: more give fewer chance candidates")
    seed: int = 0


@register_stage("dedup_embedding")
class EmbeddingDedup(GlobalStage):
    """Semantic near duplicates: cosine of embeddings (all-MiniLM-L6-v2 on QA text, CLIP on images ...),
    searched with random-hyperplane LSH over the kept samples and confirmed exactly."""

    Params = EmbeddingParams
    params: EmbeddingParams

    def signatures(self, records: list[SampleRecord], unit: UnitContext) -> list[bytes]:
        model = unit.models[self.params.model]
        if self.params.source == "image":
            for record in records:
                if record.image is None:
                    raise ValueError(f"{record.key} has no image to embed")
            requests = [(r.seed, {"image": r.image}) for r in records]
            vectors = unit.cache.map(requests, lambda m: model.call("embed_images", [x["image"] for x in m]))
        else:
            requests = [(r.seed, {"text": source_text(r, self.params.source)}) for r in records]
            vectors = unit.cache.map(requests, lambda m: model.call("embed_texts", [x["text"] for x in m]))
        return [np.asarray(v, dtype=np.float16).tobytes() for v in vectors]

    def decide(self, signatures: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        index = None
        removed: dict[str, str] = {}
        for keys, vectors in _chunks(signatures, CHUNK):
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1)
            if index is None:
                index = CosineLSHIndex(vectors.shape[1], self.params.threshold, self.params.tables,
                                       self.params.bits, self.params.seed)
            for key, vector, codes in zip(keys, vectors, index.codes(vectors), strict=True):
                match = index.nearest(vector, codes)
                if match:
                    removed[key] = f"near_duplicate_{self.params.source}_embedding: cosine {match[1]:.3f} with {match[0]}"
                else:
                    index.add(key, vector, codes)
        return removed


CHUNK = 4096  # signatures turned into vectors and hashed together; the greedy walk stays one by one, in order


def _chunks(signatures: Iterable[tuple[str, bytes]], size: int):
    keys, rows = [], []
    for key, signature in signatures:
        keys.append(key)
        rows.append(np.frombuffer(signature, dtype=np.float16))
        if len(keys) == size:
            yield keys, np.stack(rows).astype(np.float32)
            keys, rows = [], []
    if keys:
        yield keys, np.stack(rows).astype(np.float32)
