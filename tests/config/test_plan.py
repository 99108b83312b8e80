"""dvc.yaml declares the inputs params.yaml implies (features or images, per model), and every
stage can be restored from DVC's run cache."""

import pytest
import yaml

from rarespecies.config.params import load_params, parse_params
from rarespecies.config.plan import PlanError, check_declared, check_model, declared, plan

from conftest import ROOT, tiny_params


@pytest.mark.parametrize("params", [load_params(ROOT / "params.yaml"),
                                    parse_params(tiny_params())], ids=["project", "tiny"])
def test_dvc_yaml_matches_params(params):
    assert declared(ROOT / "dvc.yaml") == plan(params)


def test_every_stage_can_use_the_run_cache():
    """DVC neither saves nor restores a run-cache entry for a stage with an uncached output
    other than a metric or plot (`Stage.run` in DVC 3), and workers share unfinished work
    through the run cache (flows/distributed.py)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = repo.index.stages
        blocking = [f"{stage.addressing}: {out.def_path}" for stage in stages
                    for out in stage.outs if not (out.use_cache or out.is_metric or out.is_plot)]
    assert len(stages) >= 20 and not blocking


def test_dvc_lock_records_only_stages_dvc_yaml_defines():
    """DVC never drops a renamed or removed stage's entry from dvc.lock; a stale one reads as
    a result of the pipeline, and every stage run rewrites it."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        defined = {stage.addressing for stage in repo.index.stages}
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert locked - defined == set()


def test_augmentation_moves_a_model_to_images_and_the_check_says_what_to_write(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["convnext_full"]["training"]["augmentation"] = {"flip": True}
    params = parse_params(raw)
    assert plan(params)["trained"]["convnext_full"] == {"inputs": "arrays",
                                                       "backbone": "convnext_base"}
    fix = r"convnext_full: \{inputs: arrays, backbone: convnext_base\}"
    with pytest.raises(PlanError, match=fix):
        check_model(params, "convnext_full", ROOT / "dvc.yaml")
    assert check_model(params, "custom_cnn", ROOT / "dvc.yaml") == {"inputs": "arrays",
                                                                    "backbone": "pixels"}


@pytest.mark.parametrize(("kind", "known"), [("trained", "convnext_full"),
                                             ("cached", "convnext_base")])
def test_a_name_dvc_yaml_does_not_declare_is_refused_with_the_ones_it_does(kind, known):
    check_declared(kind, known, ROOT / "dvc.yaml")
    with pytest.raises(PlanError, match=rf"unknown \w+ 'nosuch'; .* vars.{kind}: .*{known}"):
        check_declared(kind, "nosuch", ROOT / "dvc.yaml")
