"""Run-wide dedup: the smallest key of each group is kept, the decision is a pure function of the signatures in
key order (the same whatever order the units ran in, and after a kill and resume), near duplicates are found
by sub-quadratic indexes, and top-fraction selection uses the same barrier."""

import random

import numpy as np
import pytest

from filters.dedup import ExactTextDedup, ImageHashDedup, MinHashDedup, normalize_text
from filters.near_index import CosineLSHIndex, hamming_pairs
from filters.top_fraction import TopFraction
from pipeline.record import SampleRecord
from tests.stage_helpers import run_stages, unit_for


def stage(cls, **params):
    return cls(cls.kind, cls.Params(**params), None)


def records_with(descriptions, category="SynthColor"):
    return [SampleRecord(key=f"{category.lower()}_train_{i:07d}", category=category, split="train", seed=i,
                         description=d, image=np.full((32, 32, 3), 10 * i % 255, dtype=np.uint8))
            for i, d in enumerate(descriptions)]


def decide_over(dedup, records, partitions=1, seed=0):
    """Signatures computed unit by unit in a shuffled order, decided in key order, as the engine does."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    chunks = [shuffled[i::partitions] for i in range(partitions)]
    for chunk in chunks:
        for record, signature in zip(chunk, dedup.signatures(chunk, None), strict=True):
            record.signatures[dedup.id] = signature
    return dedup.decide(sorted((r.key, r.signatures[dedup.id]) for r in records))


TEXTS = ["A red circle on a grey background.", "A RED circle, on a grey   background!", "Two blue stars.",
         "A red circle on a grey background.", "Three green squares near a yellow sign.", "Two blue stars"]


def test_exact_text_dedup_keeps_the_smallest_key_whatever_the_order():
    records = records_with(TEXTS)
    decisions = [decide_over(stage(ExactTextDedup), records, partitions=p, seed=s) for p in (1, 3) for s in range(4)]
    assert all(d == decisions[0] for d in decisions)
    removed = decisions[0]
    assert sorted(removed) == [records[i].key for i in (1, 3, 5)]
    assert removed[records[3].key].endswith(records[0].key) and removed[records[5].key].endswith(records[2].key)
    assert normalize_text("A RED circle, on a grey   background!") == "a red circle on a grey background"


def test_greedy_rule_removes_only_for_a_kept_smaller_key():
    """a~b and b~c but not a~c: b goes (near a), c stays (its only near neighbour, b, was removed)."""
    words = [f"w{i}" for i in range(40)]
    a = " ".join(words)
    b = " ".join(words[:36] + ["x1", "x2", "x3", "x4"])
    c = " ".join(words[:32] + ["x1", "x2", "x3", "x4", "y1", "y2", "y3", "y4"])
    records = records_with([a, b, c])
    dedup = stage(MinHashDedup, threshold=0.75, shingle_words=1)
    removed = decide_over(dedup, records)
    assert list(removed) == [records[1].key] and removed[records[1].key].endswith(records[0].key)


def test_minhash_finds_near_duplicate_descriptions_and_keeps_distinct_ones():
    base = ("The image shows three shapes on a plain white background. A large red circle is at the top left. "
            "A small blue square is at the bottom right. A green star is in the middle of the image.")
    near = base.replace("large", "big")
    other = ("A wooden table stands in a sunny kitchen with a red apple and two blue cups on it while a cat sleeps "
             "on the chair beside the window.")
    records = records_with([base, other, near])
    removed = decide_over(stage(MinHashDedup, threshold=0.7), records)
    assert list(removed) == [records[2].key] and "jaccard~" in removed[records[2].key]


def test_image_hash_finds_reencoded_copies_but_not_recoloured_scenes():
    from filters.evaluation import _reencode
    from generators.procedural import ProceduralParams, generate_sample

    scenes = [np.asarray(generate_sample("SynthColor", s, ProceduralParams(image_size=128)).image) for s in range(6)]
    recoloured = scenes[0][:, :, ::-1].copy()  # same layout, other colours
    records = records_with(["x"] * 9)
    for record, image in zip(records, [*scenes, scenes[2].copy(), _reencode(scenes[4]), recoloured], strict=True):
        record.image = image
    removed = decide_over(stage(ImageHashDedup), records, partitions=2)
    assert set(removed) == {records[6].key, records[7].key}
    assert removed[records[6].key].startswith("duplicate_image: phash distance 0 with " + records[2].key)
    assert removed[records[7].key].endswith(records[4].key)  # JPEG and a brightness shift barely move a pHash


def test_hamming_pairs_are_exactly_the_pairs_within_the_distance():
    rng = np.random.default_rng(0)
    for distance in (0, 1, 4, 6):
        # Few distinct values in a few bits, so many codes fall within the distance of each other.
        base = [int(rng.integers(0, 2**6)) << 50 | int(rng.integers(0, 2**6)) for _ in range(150)]
        codes = []
        for code in base:
            for bit in rng.choice(64, int(rng.integers(0, distance + 2)), replace=False):
                code ^= 1 << int(bit)
            codes.append(code)
        later, earlier, found = hamming_pairs(np.array(codes, dtype=np.uint64), 64, distance)
        brute = {(i, j, (codes[i] ^ codes[j]).bit_count()) for i in range(len(codes)) for j in range(i)
                 if (codes[i] ^ codes[j]).bit_count() <= distance}
        assert set(zip(later.tolist(), earlier.tolist(), found.tolist())) == brute and brute


def test_cosine_lsh_finds_planted_near_duplicates_without_false_positives():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = CosineLSHIndex(64, threshold=0.95)
    for i, v in enumerate(vectors):
        index.add(str(i), v, index.codes(v))
    found = 0
    for i in range(200):
        noisy = vectors[i] + 0.15 * rng.standard_normal(64).astype(np.float32) / 8
        noisy /= np.linalg.norm(noisy)
        match = index.nearest(noisy, index.codes(noisy))
        assert match is None or (match[0] == str(i) and match[1] >= 0.95)
        found += match is not None
    assert found >= 195  # misses are possible by design (about 2% at the threshold), rare above it
    far = rng.standard_normal(64).astype(np.float32)
    assert index.nearest(far / np.linalg.norm(far), index.codes(far)) is None


def test_embedding_dedup_with_all_minilm_on_qa_text(tmp_path):
    from pipeline.stage import RunContext

    config_models = {"minilm": {"backend": "sentence_transformers"}}
    from pipeline.config import ModelSpec

    specs = {name: ModelSpec.model_validate(spec) for name, spec in config_models.items()}
    context = RunContext(run_seed=0, models={n: s.identity() for n, s in specs.items()},
                         model_specs={n: s.model_dump(mode="json") for n, s in specs.items()})
    qas = [("What colour is the ball?", "The ball is red."), ("Which colour does the ball have?", "The ball is red."),
           ("How many dogs are in the park?", "Two dogs play in the park.")]
    records = [SampleRecord(key=f"synthconvlong_train_{i:07d}", category="SynthConvLong", split="train", seed=i,
                            conversations=[{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}])
               for i, (q, a) in enumerate(qas)]
    from pipeline.config import StageSpec
    from pipeline.stage_runner import StageRunner, build_stages

    spec = StageSpec.model_validate({"name": "dedup_embedding", "params": {"model": "minilm", "threshold": 0.9}})
    [(spec, dedup)] = build_stages([spec], context, [])
    StageRunner([(spec, dedup)], tmp_path).run(unit_for("SynthConvLong", 3), records)
    assert dedup.provenance()["minilm_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    removed = dedup.decide(sorted((r.key, r.signatures[spec.stage_id]) for r in records))
    assert list(removed) == [records[1].key] and "cosine" in removed[records[1].key]


def test_top_fraction_keeps_the_best_of_each_split_ties_by_key():
    records = [SampleRecord(key=f"{c}_train_{i:07d}", category=c, split="train", seed=i,
                            scores={"image_total/total": s})
               for c, values in (("synthcolor", [0.1, 0.9, 0.5, 0.5]), ("synthcount", [0.3, 0.2]))
               for i, s in enumerate(values)]
    top = stage(TopFraction, score="image_total/total", fraction=0.5)
    removed = decide_over(top, records, partitions=2)
    assert set(removed) == {"synthcolor_train_0000000", "synthcolor_train_0000003", "synthcount_train_0000001"}
    assert "below the top 0.5 of synthcolor_train" in removed["synthcolor_train_0000003"]
    with pytest.raises(KeyError, match="no score 'image_total/total'"):
        top.signatures([SampleRecord(key="a_train_0000000", category="a", split="train", seed=0)], None)


def test_signatures_of_the_engine_path(tmp_path):
    """Through the stage runner: only pending records get signatures, stored under the stage id."""
    records, _ = run_stages([{"name": "procedural_scene"}, {"name": "dedup_minhash", "id": "near"},
                             {"name": "dedup_image_hash"}], unit=unit_for("SynthCount", 3))
    assert all(len(r.signatures["near"]) == 128 * 4 and len(r.signatures["dedup_image_hash"]) == 8 + 6
               for r in records)
