"""Code deps are checked like params: every first-party file a stage imports (transitively, in
functions too) is one of its `deps` in dvc.yaml, and every code file it declares is one it
imports. DVC reruns a stage only when a declared file changes: a missing one leaves stale
outputs silently, an extra one reruns it for nothing."""

from pathlib import Path

import imports
import pytest
import yaml
from imports import ROOT, closure, relative

DVC_STAGES: dict = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
CODE_FOLDERS = ("rarespecies", "stages", "flows")


def code_deps_problems(name: str, entry: dict, root: Path = ROOT) -> list[str]:
    """What is wrong with one dvc.yaml stage's code deps, one sentence each naming the fix."""
    body = entry.get("do", entry)
    where = f"stages.{name}.{'do.' if 'do' in entry else ''}deps"
    declared = [dep for dep in body.get("deps", []) if dep.split("/")[0] in CODE_FOLDERS]
    problems = [f"{name}: {dep} is a folder of code; list the modules it imports instead"
                for dep in declared
                if (root / dep).is_dir() and any((root / dep).rglob("*.py"))]
    declared_files = {dep for dep in declared if dep.endswith(".py")}
    imported = set(relative(closure((root / "stages" / f"{name}.py").resolve())))
    problems += [f"{name} imports {path} but does not declare it: add `- {path}` under {where} "
                 "in dvc.yaml" for path in sorted(imported - declared_files)]
    problems += [f"{name} declares {path} but never imports it: remove it from {where} in "
                 "dvc.yaml" for path in sorted(declared_files - imported)]
    return problems


@pytest.mark.parametrize("name", list(DVC_STAGES))
def test_stage_declares_exactly_the_code_it_imports(name: str):
    problems = code_deps_problems(name, DVC_STAGES[name])
    assert not problems, "\n".join(problems)


def test_an_undeclared_import_is_named_with_the_line_to_write(tmp_path, monkeypatch):
    """The check above can fail: a stage importing a module it does not declare, and declaring
    one it does not import, is told both."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "rarespecies/data").mkdir(parents=True)
    (tmp_path / "stages/fake.py").write_text(
        "def main():\n    from rarespecies.data import helper  # inside a function\n")
    (tmp_path / "rarespecies/data/helper.py").write_text("import rarespecies.data.deeper\n")
    (tmp_path / "rarespecies/data/deeper.py").write_text("")
    (tmp_path / "rarespecies/data/unused.py").write_text("")
    monkeypatch.setattr(imports, "ROOT", tmp_path)
    imports.direct_imports.cache_clear()
    try:
        entry = {"deps": ["stages/fake.py", "rarespecies/data/helper.py",
                          "rarespecies/data/unused.py"]}
        assert code_deps_problems("fake", entry, tmp_path) == [
            "fake imports rarespecies/data/deeper.py but does not declare it: add "
            "`- rarespecies/data/deeper.py` under stages.fake.deps in dvc.yaml",
            "fake declares rarespecies/data/unused.py but never imports it: remove it from "
            "stages.fake.deps in dvc.yaml"]
        folder = {"do": {"deps": ["stages/fake.py", "rarespecies/data"]}}
        assert code_deps_problems("fake", folder, tmp_path)[0] == (
            "fake: rarespecies/data is a folder of code; list the modules it imports instead")
    finally:
        imports.direct_imports.cache_clear()
