"""`fusion inspect` in a real browser: headless Chromium renders the page, every image loads and every shown
sample's QA is on it; the histograms are valid PNGs and also go into the dataset card with the pass rates."""

import html
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pipeline.card import validate_card

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
# Appended to a copy of the page only: the page itself has no script.
PROBE = """<script>
window.addEventListener("load", () => {
  const lines = Array.from(document.images).map(i => i.getAttribute("src") + " " + i.naturalWidth);
  const out = document.createElement("pre"); out.id = "image-probe"; out.textContent = lines.join("\\n");
  document.body.appendChild(out);
});
</script>"""


class TextOf(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts = []

    def handle_data(self, data):
        self.parts.append(data)


def normalized(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def inspected(filtered_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "page.html"
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "inspect", str(filtered_dataset), "--out", str(out),
                          "--per-category", "4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    from pipeline.inspect import inspect_dataset

    return out, inspect_dataset(filtered_dataset, out, per_category=4)


def test_the_page_shows_accepted_and_rejected_samples_with_reasons(inspected):
    page, result = inspected
    text = page.read_text()
    statuses = {s.status for samples in result.shown.values() for s in samples}
    assert statuses == {"accepted", "rejected"}
    for samples in result.shown.values():
        for sample in (s for s in samples if s.status == "rejected"):
            assert html.escape(sample.reject_reason) in text
    assert "<script" not in text.lower()
    for path in [*result.histograms.values(), result.contact_sheet]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100
    assert set(result.histograms) == set(result.shown)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_headless_chromium_loads_every_image_and_shows_every_qa(inspected, tmp_path):
    page, result = inspected
    copy = tmp_path / "site"
    shutil.copytree(page.parent, copy)
    probed = copy / page.name
    probed.write_text(probed.read_text().replace("</body>", PROBE + "</body>"))
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    probe = re.search(r'<pre id="image-probe">(.*?)</pre>', dom, re.S)
    assert probe, dom[-2000:]
    widths = [line.rsplit(" ", 1) for line in html.unescape(probe.group(1)).splitlines()]
    shown_images = sum(1 for samples in result.shown.values() for s in samples if s.image)
    assert len(widths) == shown_images + len(result.histograms) + 1  # + the contact sheet
    assert all(int(width) > 0 for _, width in widths), [src for src, width in widths if int(width) == 0]
    parser = TextOf()
    parser.feed(dom)
    page_text = normalized(" ".join(parser.parts))
    for samples in result.shown.values():
        for sample in samples:
            assert sample.conversations
            for turn in sample.conversations:
                assert normalized(turn["value"].removeprefix("<image>")) in page_text, (sample.key, turn)


def test_the_card_has_the_pass_rates_and_histograms(filtered_dataset):
    card = (filtered_dataset / "README.md").read_text()
    section = card.split("## Scores and filters", 1)[1].split("\n## ", 1)[0]
    assert "| `dedup_minhash` |" in section and "| `text_rules` |" in section
    images = re.findall(r'<img src="(samples/scores/[^"]+\.png)"', section)
    assert len(images) == 2
    for image in images:
        with Image.open(filtered_dataset / image) as png:
            assert png.format == "PNG"
    assert validate_card(filtered_dataset) == []


def test_the_cards_accepted_scores_are_every_shards_score_columns(filtered_dataset):
    import pyarrow.parquet as pq

    from pipeline.indexing import load_manifest
    from pipeline.inspect.collect import category_scores

    manifest = load_manifest(filtered_dataset)
    found = category_scores(filtered_dataset, manifest)
    assert found
    for category, scores in found.items():
        expected: dict[str, list[float]] = {}
        for shard in (s for s in manifest["shards"] if s["category"] == category):
            table = pq.read_table(filtered_dataset / shard["parquet"])
            for name in (n for n in table.column_names if n.startswith("score/")):
                expected.setdefault(name.removeprefix("score/"), []).extend(
                    v for v in table.column(name).to_pylist() if v is not None)
        assert expected and scores.accepted == expected
