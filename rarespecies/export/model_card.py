"""The model card (`reports/model_card.md`): what a user of the ONNX file needs to know.

Data version, split sizes, overall and per-family test metrics (worst families named),
intended use and limits, and how to call the model with onnxruntime alone. Everything comes
from the pipeline's own outputs, so the card never disagrees with the file. Nothing that changes
between two runs of the same pipeline goes in (the git state, timings): measured speed is the
benchmark's (`reports/benchmark.md`), so the card's bytes, like the model's, are reproducible.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rarespecies.core.files import atomic_path, read_json
from rarespecies.runtime.session import read_metadata

WORST = 3
USAGE = '''```python
import json
import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("{onnx}", providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
labels, size = json.loads(meta["labels"]), int(meta["input_size"])
image = Image.open("photo.jpg").convert("RGB")
image.thumbnail(({max_side}, {max_side}), Image.LANCZOS)  # as ingest did
pixels = np.asarray(image.resize((size, size), Image.BILINEAR), np.uint8)[None]  # as preprocess
probabilities = session.run(None, {{"{input_name}": pixels}})[0][0]
for i in probabilities.argsort()[::-1][:3]:
    print(labels[i], round(float(probabilities[i]), 3))
```

Or, with this package's base install (no TensorFlow): `rarespecies predict {onnx} photo.jpg`.'''


def read_families(path: Path) -> list[dict]:
    """Per-family rows of `evaluate` (family, precision, recall, f1, support), worst F1 first."""
    with path.open(newline="") as stream:
        rows = [{"family": r["family"], **{k: float(r[k]) for k in ("precision", "recall", "f1")},
                 "support": int(r["support"])} for r in csv.DictReader(stream)]
    return sorted(rows, key=lambda r: (r["f1"], -r["support"], r["family"]))


def _metrics_section(choice: dict, families: list[dict]) -> list[str]:
    m = choice["test_metrics"]
    worst = [f"{r['family']} (F1 {r['f1']:.2f}, {r['support']} images)"
             for r in families[:WORST] if r["support"]]
    lines = ["## Test metrics", "",
             "| macro F1 | weighted F1 | accuracy | top-5 accuracy | images |",
             "| --- | --- | --- | --- | --- |",
             f"| {m['macro_f1']:.4f} | {m['weighted_f1']:.4f} | {m['accuracy']:.4f} "
             f"| {m['top5_accuracy']:.4f} | {m['test_images']} |", "",
             f"Worst families: {'; '.join(worst)}.", "",
             "| family | precision | recall | F1 | test images |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['family']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} "
              f"| {r['support']} |" if r["support"] else f"| {r['family']} | - | - | - | 0 |"
              for r in families]
    return lines


def _limits_section(choice: dict, split: dict, families: list[dict]) -> list[str]:
    counts = {name: sum(c.values()) if isinstance(c, dict) else c
              for name, c in split.get("per_class", {}).items()}
    lines = ["## Intended use and limits", "",
             "- Intended: family-level triage of photos of rare animals like those of the "
             "Encyclopedia of Life, with a person checking the top-k before any decision.",
             "- Not for: species-level identification, families it was not trained on (it "
             "always answers one of its families), or non-photographic images."]
    if counts:
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        lines.append(f"- Class imbalance: from {counts[small]} images ({small}) to "
                     f"{counts[big]} ({big}); macro F1 weighs every family equally, so rare "
                     "families pull it down.")
    untested = [r["family"] for r in families if not r["support"]]
    untested += split.get("classes_without", {}).get("test", [])
    if untested:
        lines.append(f"- No test image for: {', '.join(sorted(set(untested)))}; their "
                     "quality is unmeasured.")
    lines.append("- The Rare Species data includes photos that show no animal (about 15%: "
                 "habitats, drawings, specimen labels) and ~160 near-duplicate pairs; the "
                 "model still names a family for such images.")
    if choice["backbone"]["weights"] in (None, "null"):
        lines.append("- **This model's backbone has random weights (`weights: null`)**: it is "
                     "a pipeline check, not a usable classifier. Train with `weights: "
                     "imagenet` for real use.")
    return lines


def model_card(choice: dict, metadata: dict, families: list[dict], split: dict, ingest: dict,
               export: dict, quantize: dict, onnx_path: str) -> str:
    """The card as Markdown.

    Args:
        choice: the select stage's `choice.json`.
        metadata: the ONNX file's metadata (provenance).
        families: `read_families` of the chosen model.
        split: `reports/split.json`.
        ingest: `reports/ingest.json`.
        export: `reports/export.json` (parity).
        quantize: `reports/quantize.json`.
        onnx_path: where the fp32 model ships.

    Returns:
        The Markdown text.
    """
    b, s = choice["backbone"], choice["settings"]
    images = split["images"]
    int8 = (f"shipped at `export/int8/model.onnx` ({quantize['quantization']}): "
            if quantize["shipped"] else "not shipped: ") + quantize["reason"] + "."
    lines = [f"# Model card: {choice['model']}", "",
             f"Classifies a photo of an animal into one of {len(families)} families "
             "(`<phylum>_<family>`). ONNX, input RGB uint8 `[N, "
             f"{b['input_size']}, {b['input_size']}, 3]`, output family probabilities.", "",
             "## Model", "",
             f"- {b['architecture']} backbone ({b['input_size']} px, weights "
             f"`{b['weights'] or 'null'}`), `{s['head']['type']}` head; preprocessing inside "
             "the graph.",
             f"- Chosen because: {choice['reason']}.",
             f"- fp32 file: `{onnx_path}` ({export['onnx_mb']} MB, opset {export['opset']}); "
             f"matches Keras within {export['max_abs_diff']:.1e} on {export['images']} test "
             f"images, top-1 agreement {export['top1_agreement']:.2%}.",
             f"- INT8 variant {int8}",
             "", "## Data", "",
             f"- Data version (`data.dvc` md5): `{metadata.get('data_dvc_md5', 'unknown')}`; "
             f"params sha256 `{metadata.get('params_sha256', 'unknown')}`.",
             f"- Images: {ingest['ingested']} ingested of {ingest['metadata_rows']} listed, "
             f"{ingest['quarantined']} quarantined (`reports/ingest.json`).",
             f"- Split: {images['train']} train, {images['val']} validation, "
             f"{images['test']} test, {split['classes']} families.", ""]
    lines += [*_metrics_section(choice, families), ""]
    lines += [*_limits_section(choice, split, families), ""]
    lines += ["## Size and speed", "",
              f"fp32 {export['onnx_mb']} MB"
              + (f", INT8 {quantize['int8_mb']} MB" if quantize["shipped"] else "")
              + ". Latency and throughput of every runtime, measured on the machine that ran "
              "the pipeline, are in `reports/benchmark.md` (`dvc metrics show "
              "metrics/benchmark.json`).", "",
              "## How to use it without TensorFlow", "",
              USAGE.format(onnx=onnx_path, max_side=metadata.get("normalize_max_side", "?"),
                           input_name="pixels")]
    return "\n".join(lines) + "\n"


def write_model_card(export_dir: Path, onnx_path: Path, split_report: Path, ingest_report: Path,
                     export_report: Path, quantize_report: Path, out: Path) -> str:
    """Write the card of the exported model from the pipeline's outputs.

    Args:
        export_dir: the select stage's folder (`choice.json`, `per_family.csv`).
        onnx_path: the fp32 ONNX file (its metadata holds the provenance).
        split_report, ingest_report: the split and ingest reports.
        export_report, quantize_report: the export and quantize reports (every figure).
        out: the Markdown file.

    Returns:
        The card.
    """
    card = model_card(read_json(export_dir / "choice.json"), read_metadata(onnx_path),
                      read_families(export_dir / "per_family.csv"), read_json(split_report),
                      read_json(ingest_report), read_json(export_report),
                      read_json(quantize_report), str(onnx_path))
    with atomic_path(out) as tmp:
        tmp.write_text(card)
    return card
