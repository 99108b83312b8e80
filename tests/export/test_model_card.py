"""The model card: every section filled from the pipeline's outputs, worst families named."""

from rarespecies.export.model_card import model_card, read_families

CHOICE = {"model": "convnext_full", "reason": "export.model names convnext_full",
          "backbone": {"architecture": "ConvNeXtBase", "input_size": 224, "weights": None},
          "settings": {"head": {"type": "full"}},
          "test_metrics": {"macro_f1": 0.5, "weighted_f1": 0.6, "accuracy": 0.7,
                           "top5_accuracy": 0.9, "test_images": 9}}
SPLIT = {"images": {"train": 30, "val": 5, "test": 9}, "classes": 3,
         "classes_without": {"test": ["c_gamma"]},
         "per_class": {"a_alpha": {"train": 20, "val": 3, "test": 6},
                       "b_beta": {"train": 8, "val": 2, "test": 3},
                       "c_gamma": {"train": 2, "val": 0, "test": 0}}}
EXPORT = {"onnx_mb": 12.5, "opset": 17, "max_abs_diff": 3e-7, "images": 9,
          "top1_agreement": 1.0}
def _families(tmp_path):
    path = tmp_path / "per_family.csv"
    path.write_text("family,precision,recall,f1,support\na_alpha,0.8,0.9,0.85,6\n"
                    "b_beta,0.2,0.1,0.13,3\nc_gamma,0,0,0,0\n")
    return read_families(path)


def test_families_come_worst_first_and_untested_last_among_equals(tmp_path):
    assert [r["family"] for r in _families(tmp_path)] == ["c_gamma", "b_beta", "a_alpha"]


def test_card_has_provenance_metrics_limits_size_and_usage(tmp_path):
    quantize = {"shipped": False, "quantization": "dynamic INT8 on MatMul",
                "reason": "INT8 macro F1 0.40 vs fp32 0.50: a drop of 10.00 points"}
    card = model_card(CHOICE, {"data_dvc_md5": "abc123.dir", "params_sha256": "0123abcd",
                               "normalize_max_side": "512"},
                      _families(tmp_path), SPLIT, {"ingested": 44, "metadata_rows": 45,
                                                   "quarantined": 1},
                      EXPORT, quantize, "export/model.onnx")
    assert "# Model card: convnext_full" in card
    assert "`abc123.dir`" in card and "`0123abcd`" in card
    assert "30 train, 5 validation, 9 test, 3 families" in card
    assert "44 ingested of 45 listed, 1 quarantined" in card
    assert "| 0.5000 | 0.6000 | 0.7000 | 0.9000 | 9 |" in card
    assert "Worst families: b_beta (F1 0.13, 3 images); a_alpha" in card  # untested left out
    assert "No test image for: c_gamma" in card
    assert "from 2 images (c_gamma) to 29 (a_alpha)" in card
    assert "random weights" in card  # weights: null is called out
    assert "INT8 variant not shipped: INT8 macro F1 0.40" in card
    # Measured speed changes from run to run: the card points to the benchmark instead.
    assert "fp32 12.5 MB" in card and "reports/benchmark.md" in card and " ms" not in card
    assert 'image.thumbnail((512, 512)' in card and "rarespecies predict" in card
