"""`fusion inspect DIR [--out FILE.html]`: a static page of what a dataset kept and rejected, and why.

Per category: the score histograms (accepted vs rejected), the pass rate of every stage, and sample cards
(image, conversation, scores, reject stage and reason). Beside the page: a folder with its images and
histograms and a PNG contact sheet of every shown sample (green frame: accepted, red: rejected). The page
has no script and loads nothing from the network; open it from disk.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from pipeline.fileio import atomic_write_bytes, atomic_write_text
from pipeline.indexing import load_manifest
from pipeline.inspect.collect import ShownSample, category_scores, pass_rates, shown_samples
from pipeline.inspect.contact_sheet import write_contact_sheet
from pipeline.inspect.histograms import write_histogram


@dataclass(frozen=True)
class InspectResult:
    page: Path
    contact_sheet: Path | None
    histograms: dict[str, Path]
    shown: dict[str, list[ShownSample]]


def inspect_dataset(root: Path, out: Path | None = None, per_category: int = 6) -> InspectResult:
    root = Path(root)
    manifest = load_manifest(root)
    page = Path(out) if out else root / "inspect" / "index.html"
    assets = page.with_name(f"{page.stem}_files")
    shown = shown_samples(root, manifest, per_category)
    histograms = {}
    for category, scores in category_scores(root, manifest).items():
        path = write_histogram(category, scores, assets / f"scores-{category}.png")
        if path:
            histograms[category] = path
    for samples in shown.values():
        for sample in samples:
            if sample.image:
                atomic_write_bytes(assets / f"{sample.key}.{sample.image_format}", sample.image)
    sheet = write_contact_sheet(shown, page.with_name(f"{page.stem}_contact_sheet.png"))
    _, rates = pass_rates(root, manifest)
    atomic_write_text(page, render_page(root, manifest, page, shown, histograms, rates, sheet))
    return InspectResult(page, sheet, histograms, shown)


def render_page(root: Path, manifest: dict, page: Path, shown: dict[str, list[ShownSample]],
                histograms: dict[str, Path], rates: dict[str, list[dict]], sheet: Path | None) -> str:
    e = html.escape
    title = manifest["config"]["dataset"]["pretty_name"]
    counts = manifest["counts"]
    body = [f"<h1>{e(title)}</h1>",
            f"<p>{counts['accepted']:,} samples kept, {counts['rejected']:,} rejected; dataset <code>{e(str(root))}"
            f"</code>.</p>"]
    if manifest.get("reshard"):
        body.append(f"<p>Resharded from <code>{e(manifest['reshard']['source'])}</code> with "
                    f"<code>--where {e(manifest['reshard']['where'])}</code>.</p>")
    if sheet:
        body.append(f'<p><img class="sheet" src="{e(_relative(sheet, page))}" alt="contact sheet"></p>')
    body.append("<nav>" + " · ".join(f'<a href="#{e(c)}">{e(c)}</a>' for c in shown) + "</nav>")
    for category, samples in shown.items():
        body.append(f'<section id="{e(category)}"><h2>{e(category)}</h2>')
        body.append(_rate_table(rates.get(category, [])))
        if category in histograms:
            body.append(f'<img class="hist" src="{e(_relative(histograms[category], page))}" '
                        f'alt="score histograms of {e(category)}">')
        for status in ("accepted", "rejected"):
            group = [s for s in samples if s.status == status]
            body.append(f"<h3>{status.capitalize()} ({len(group)} shown)</h3><div class=\"grid\">")
            body += [_sample_card(s, page) for s in group]
            body.append("</div>")
        body.append("</section>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _rate_table(rows: list[dict]) -> str:
    cells = []
    for row in rows:
        rate = "-" if row["pass_rate"] is None else f"{row['pass_rate']:.1%}"
        cells.append(f"<tr><td><code>{html.escape(row['stage'])}</code></td><td>{row['input']:,}</td>"
                     f"<td>{row['rejected']:,}</td><td>{rate}</td></tr>")
    return ("<table class=\"rates\"><tr><th>stage</th><th>reached it</th><th>rejected</th><th>pass rate</th></tr>"
            f"{''.join(cells)}</table>")


def _sample_card(sample: ShownSample, page: Path) -> str:
    e = html.escape
    image = (f'<img src="{e(page.stem)}_files/{e(sample.key)}.{e(sample.image_format)}" alt="{e(sample.key)}">'
             if sample.image else "<p class=\"noimage\">(no image kept)</p>")
    turns = "".join(f'<p class="{e(t["from"])}"><b>{"Q" if t["from"] == "human" else "A"}:</b> '
                    f'{e(t["value"].removeprefix("<image>").strip())}</p>' for t in sample.conversations)
    scores = "".join(f"<tr><td>{e(name)}</td><td>{value:.4g}</td></tr>" for name, value in sorted(sample.scores.items()))
    reason = (f'<p class="reason"><b>{e(sample.reject_stage)}</b>: {e(sample.reject_reason)}</p>'
              if sample.status == "rejected" else "")
    return (f'<div class="card {sample.status}" data-key="{e(sample.key)}">{image}<p class="key">{e(sample.key)}</p>'
            f"{reason}<div class=\"qa\">{turns}</div><details><summary>scores</summary><table>{scores}</table>"
            "</details></div>")


def _relative(path: Path, page: Path) -> str:
    return path.relative_to(page.parent).as_posix()


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 300px; border: 3px solid #3a7d44; border-radius: 6px; padding: 8px; font-size: 13px; }
.card.rejected { border-color: #c0392b; }
.card img { width: 100%; image-rendering: pixelated; }
.key { font-family: monospace; color: #555; }
.reason { color: #c0392b; }
.qa p { margin: 4px 0; white-space: pre-wrap; }
img.hist, img.sheet { max-width: 100%; }
table.rates { border-collapse: collapse; margin: 8px 0; }
table.rates td, table.rates th { border: 1px solid #ccc; padding: 2px 8px; }
"""
