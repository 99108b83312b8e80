"""The shape of the code: one package in layers that import downwards, no import cycle, thin
stages and flows on top, and only the package installed."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from imports import ROOT, all_modules, cycles, direct_imports, is_docstring_only, module_name

# Bottom to top: a module may import its own layer and the layers before it, never after.
LAYERS = ("core", "runtime", "config", "data", "modeling", "export", "ops", "cli")
BASE_LAYERS = ("core", "runtime")
BASE_INSTALL = {"numpy", "PIL", "onnxruntime", "typer"}  # pyproject's base dependencies


def layer(path: Path) -> str:
    """`rarespecies/<layer>/...` or `rarespecies/cli.py` -> the layer's name."""
    parts = path.relative_to(ROOT / "rarespecies").with_suffix("").parts
    return parts[0]


def package_modules() -> list[Path]:
    return [p for p in all_modules() if p.is_relative_to(ROOT / "rarespecies")
            and p.name != "__init__.py"]


def test_no_import_cycle_among_first_party_modules():
    assert cycles() == []


def test_the_cycle_finder_finds_one(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other are reported."""
    import imports

    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/a.py").write_text("from stages import b\n")
    (tmp_path / "stages/b.py").write_text("import stages.a\n")
    monkeypatch.setattr(imports, "ROOT", tmp_path)
    imports.direct_imports.cache_clear()
    try:
        assert imports.cycles() == [["stages.a", "stages.b", "stages.a"]]
    finally:
        imports.direct_imports.cache_clear()


def test_every_module_of_the_package_is_in_a_known_layer():
    assert {layer(p) for p in package_modules()} == set(LAYERS)


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: module_name(p))
def test_a_layer_never_imports_a_higher_one(path: Path):
    own = LAYERS.index(layer(path))
    higher = [module_name(p) for p in direct_imports(path)
              if p.is_relative_to(ROOT / "rarespecies") and LAYERS.index(layer(p)) > own]
    outside = [module_name(p) for p in direct_imports(path)
               if not p.is_relative_to(ROOT / "rarespecies")]
    assert not higher, f"{module_name(path)} ({layer(path)}) imports higher layers: {higher}"
    assert not outside, f"{module_name(path)} imports stages or flows: {outside}"


def imported_packages(path: Path) -> set[str]:
    """The top-level names a file imports, wherever the import statement is."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            tops.add(node.module.split(".")[0])
    return tops


@pytest.mark.parametrize("path", [p for p in package_modules() if layer(p) in BASE_LAYERS],
                         ids=lambda p: module_name(p))
def test_the_base_layers_need_only_the_base_install(path: Path):
    """`rarespecies predict` runs with onnxruntime, NumPy, Pillow and typer alone."""
    foreign = imported_packages(path) - BASE_INSTALL - set(sys.stdlib_module_names) - {
        "rarespecies"}
    assert not foreign, f"{module_name(path)} imports {sorted(foreign)}: not in the base install"


@pytest.mark.parametrize("path", [p for p in all_modules() if not p.is_relative_to(ROOT / "flows")],
                         ids=lambda p: module_name(p))
def test_nothing_the_stages_run_imports_scikit_learn(path: Path):
    """stages/__init__.py keeps Keras from importing scikit-learn in stage processes."""
    assert "sklearn" not in imported_packages(path)


def test_stage_processes_import_keras_without_scikit_learn():
    code = ("import stages, sys; import keras; from rarespecies.runtime.metrics import score; "
            "print(sorted(name for name, module in sys.modules.items() if module and "
            "name.split('.')[0] == 'sklearn' or name == 'scipy.stats'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_package_init_files_hold_only_their_docstring():
    """Code in a package `__init__.py` would run before every module of it, unseen by the
    code-deps check (which leaves docstring-only ones out)."""
    inits = [p for p in all_modules() if p.name == "__init__.py"
             and p.is_relative_to(ROOT / "rarespecies")]
    assert inits and all(is_docstring_only(p) for p in inits)


def test_stages_and_flows_are_thin():
    """One stage module per dvc.yaml stage, each short; flows over the package and DVC."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    assert modules == set(stages)
    for path in [*(ROOT / "stages").glob("*.py"), *(ROOT / "flows").glob("*.py")]:
        lines = len(path.read_text().splitlines())
        limit = 50 if path.parent.name == "stages" else 140
        assert lines <= limit, f"{path.relative_to(ROOT)} has {lines} lines: move code into " \
                               "the package"
