"""Shared fixtures: tiny course-layout folders and a tiny copy of the whole project."""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
BIN = Path(sys.executable).parent
# Real EOL photos and the dataset's full metadata (test use only, never copied into the
# repository): RARESPECIES_SHARED_DATA if set, else ../shared/data beside the project, as on the
# developers' machines, else beside the checkout a local clone was made from (a clone in /tmp).


def _shared_data() -> Path:
    if "RARESPECIES_SHARED_DATA" in os.environ:
        return Path(os.environ["RARESPECIES_SHARED_DATA"])
    candidates = [ROOT.parent / "shared/data"]
    origin = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared/data")
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED_DATA = _shared_data()
EOL_SAMPLE = SHARED_DATA / "eol-real-sample"
REQUIRE_SHARED_DATA = "RARESPECIES_REQUIRE_SHARED_DATA"  # .ci/run sets it to 1


def require_shared(path: Path) -> Path:
    """`path` in the shared reference data, or skip the test naming what is missing.

    With RARESPECIES_REQUIRE_SHARED_DATA=1 (as `.ci/run` sets it) the test fails instead, so CI
    never passes by skipping what it cannot find.
    """
    if path.exists():
        return path
    reason = (f"needs the reference data {path} (real EOL photos and metadata, never in the "
              "repository): set RARESPECIES_SHARED_DATA to the folder holding it")
    if os.environ.get(REQUIRE_SHARED_DATA) == "1":
        pytest.fail(f"{reason}; {REQUIRE_SHARED_DATA}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)
HEADER = ["rare_species_id", "eol_content_id", "eol_page_id", "kingdom", "phylum", "family",
          "file_path"]


# Session fixtures that run the tiny pipeline. `make test` runs two pytest-xdist workers; every
# test module that uses one of these runs on the same worker, so each runs once per pytest run.
PIPELINE_FIXTURES = re.compile(r"\b(tiny_project|reproduced|fresh_clone)\b")


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With `--dist loadgroup`: the modules that use the tiny pipeline are one unit of work,
    every other test its own. (xdist's own loadgroup markers do not reach pytest 9's node ids.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    pipeline = {path.relative_to(ROOT).as_posix() for path in TESTS.rglob("test_*.py")
                if PIPELINE_FIXTURES.search(path.read_text())}

    class PipelineOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "pipeline" if nodeid.split("::")[0] in pipeline else nodeid

    return PipelineOnOneWorker(config, log)


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`, recursively for nested dictionaries."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (deep_merge(base[key], value)
                       if isinstance(value, dict) and isinstance(base.get(key), dict) else value)
    return merged


def tiny_params() -> dict:
    """params.yaml with the tiny profile applied."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return deep_merge(base, yaml.safe_load((ROOT / "tests/profiles/tiny.yaml").read_text()))


def run(*args: str, cwd: Path, check: bool = True,
        checkout_on_path: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the test environment's executables first on PATH.

    `stages` and `flows` are not installed: outside a copy of the project (whose own folders
    come first, from the working directory), they are the checkout's, unless
    `checkout_on_path` is false (to try an installed package on its own).
    """
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if checkout_on_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def write_course_folder(root: Path, families: dict[str, int], size: int = 64,
                        seed: int = 0) -> list[dict]:
    """A course-layout folder of random JPEGs; returns its metadata rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, count in families.items():
        phylum, family = label.split("_", 1)
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            content_id = 10_000_000 + len(rows)
            path = f"{label}/{content_id}_{i}_eol-full-size-copy.jpg"
            pixels = rng.integers(0, 255, (size, size + 8 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / path, quality=90)
            rows.append({"rare_species_id": f"id-{len(rows):04d}", "eol_content_id": content_id,
                         "eol_page_id": i, "kingdom": "animalia", "phylum": phylum,
                         "family": family, "file_path": path})
    write_metadata(root, rows)
    return rows


def write_metadata(root: Path, rows: list[dict], header: list[str] = HEADER) -> None:
    """Write metadata.csv with the given rows."""
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


HF_CATALOG = ["rarespecies_id", "eol_content_id", "eol_page_id", "kingdom", "phylum", "class",
              "order", "family", "genus", "species", "sciName", "common"]


def taxonomy_rows(families: int, per_family: int) -> list[dict]:
    """Real rows of the dataset's taxonomy: the first `per_family` images of `families` families.

    Returns dicts with the Hugging Face catalogue's columns (eol ids from the file name).
    """
    rows: list[dict] = []
    taken: dict[str, int] = {}
    with require_shared(SHARED_DATA / "rare-species-taxonomy.csv").open(newline="") as handle:
        for record in csv.DictReader(handle):
            family = record["family"]
            if taken.get(family, 0) >= per_family or (family not in taken
                                                       and len(taken) == families):
                continue
            taken[family] = taken.get(family, 0) + 1
            content_id, page_id = Path(record["filepath"]).name.split("_")[:2]
            rows.append({
                "rarespecies_id": f"hf-{len(rows):05d}", "eol_content_id": content_id,
                "eol_page_id": page_id, "kingdom": record["kingdom"],
                "phylum": record["phylum"], "class": record["cls"], "order": record["order"],
                "family": family, "genus": record["genus"], "species": record["species"],
                "sciName": record["class"], "common": record["common_name"]})
    return rows


def hf_image_path(row: dict) -> str:
    """Where the Hugging Face layout keeps a catalogue row's image."""
    taxa = "-".join(row[k] for k in ("kingdom", "phylum", "class", "order", "family", "genus",
                                     "species"))
    return f"dataset/{taxa}/{row['eol_content_id']}_{row['eol_page_id']}_eol-full-size-copy.jpg"


def write_hf_folder(root: Path, rows: list[dict], size: int = 64, seed: int = 0) -> None:
    """A Hugging Face-layout folder: metadata/rarespecies-catalog.csv + dataset/<taxa>/ JPEGs."""
    rng = np.random.default_rng(seed)
    for i, row in enumerate(rows):
        path = root / hf_image_path(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (size, size + 4 * (i % 8), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    with (root / "metadata/rarespecies-catalog.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HF_CATALOG)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="session", autouse=True)
def phase_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Phase durations (`rarespecies.core.progress`) of the tests, and of the stages they run,
    go to a temporary file, not to the user's cache."""
    path = tmp_path_factory.mktemp("progress") / "phase_seconds.json"
    previous = os.environ.get("RARESPECIES_PHASE_HISTORY")
    os.environ["RARESPECIES_PHASE_HISTORY"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("RARESPECIES_PHASE_HISTORY", None)
    else:
        os.environ["RARESPECIES_PHASE_HISTORY"] = previous


@pytest.fixture
def course_folder(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Three families of 5 random images each."""
    root = tmp_path / "data"
    rows = write_course_folder(root, {"chordata_ardeidae": 5, "chordata_balaenidae": 5,
                                      "mollusca_unionidae": 5})
    return root, rows


def copy_project(target: Path) -> Path:
    """Copy the project's tracked and unignored files (no venv, data or outputs) to `target`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project in a fresh git repository, with the tiny profile and tiny sample."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    for generated in ("dvc.lock", "metrics", "reports", "plots", "dvclive"):
        path = project / generated
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(sys.executable, "-m", "rarespecies.cli", "sample", "--tiny", "--out", "data", cwd=project)
    run("git", "init", "-q", cwd=project)
    run("dvc", "add", "-q", "data", cwd=project)
    run("git", "add", "-A", cwd=project)
    run("git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm",
        "tiny project", cwd=project)
    return project


@pytest.fixture(scope="session")
def reproduced(tiny_project: Path) -> tuple[Path, str]:
    """The tiny project after one full `dvc repro`, with that run's output."""
    return tiny_project, run("dvc", "repro", cwd=tiny_project).stdout


@dataclass(frozen=True)
class FreshClone:
    """The reproduced tiny project, committed, cloned and run again from nothing."""

    source: Path  # the committed project (its dvc.lock and metrics are the reference)
    clone: Path  # a git clone, run with an empty DVC cache and regenerated data
    output: str  # what its `dvc repro` printed
    reads: Path  # <stage>.json: the params.yaml keys each stage process read


@pytest.fixture(scope="session")
def fresh_clone(reproduced: tuple[Path, str],
                tmp_path_factory: pytest.TempPathFactory) -> FreshClone:
    """A fresh clone's whole pipeline run, shared by the reproducibility and declared-params
    tests: no DVC cache, the data regenerated and the metrics and plots git holds deleted, so
    every stage runs as DVC runs it (or is checked out, when an earlier stage of the run made
    its locked output), each process recording the params it reads
    (tests/recording/sitecustomize.py)."""
    work = tmp_path_factory.mktemp("fresh-clone")
    source = project_copy(reproduced[0], work / "source", commit=True)
    clone, reads = work / "clone", work / "reads"
    reads.mkdir()
    run("git", "clone", "-q", str(source), str(clone), cwd=work)
    run("dvc", "cache", "dir", "--local", str(work / "cache"), cwd=clone)
    run(sys.executable, "-m", "rarespecies.cli", "sample", "--tiny", "--out", "data", cwd=clone)
    for tracked in ("metrics", "reports", "plots", "dvclive"):  # git's outputs: made again too
        shutil.rmtree(clone / tracked)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS / "recording"), str(TESTS)]))
        patch.setenv("RARESPECIES_PARAM_READS", str(reads))
        output = run("dvc", "repro", cwd=clone).stdout
    return FreshClone(source, clone, output, reads)


def project_copy(source: Path, target: Path, commit: bool = False) -> Path:
    """A copy of a reproduced project (git history, DVC cache, outputs) for a test to change.

    Args:
        source: the project, e.g. the `reproduced` fixture's.
        target: where the copy goes (must not exist).
        commit: commit its results (dvc.lock, metrics), as experiments need a baseline.
    """
    shutil.copytree(source, target, symlinks=True)
    if commit:
        run("git", "add", "-A", cwd=target)
        run("git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm",
            "baseline results", cwd=target)
    return target


def ran_stages(output: str) -> set[str]:
    """Stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture
def deny_reading(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Make a file or folder unreadable: chmod 000, and where that does not deny (tests run as
    root, or with CAP_DAC_OVERRIDE) os.open and os.scandir fail on it with EACCES as the
    kernel would."""
    denied: list[tuple[Path, int]] = []

    def refuse(function: Callable, path: str) -> Callable:
        def guarded(target: Any = ".", *args: Any, **kwargs: Any) -> Any:
            if not isinstance(target, int) and os.fspath(target) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return function(target, *args, **kwargs)
        return guarded

    def deny(path: Path) -> None:
        mode = path.stat().st_mode
        denied.append((path, mode))
        path.chmod(0)
        try:
            os.scandir(path).close() if path.is_dir() else path.open("rb").close()
        except PermissionError:
            return  # the kernel denies it
        monkeypatch.setattr(os, "open", refuse(os.open, os.fspath(path)))
        monkeypatch.setattr(os, "scandir", refuse(os.scandir, os.fspath(path)))

    yield deny
    for path, mode in denied:
        path.chmod(mode)


def start_writer(target: Path, fork: bool = False) -> tuple[subprocess.Popen, Path, int]:
    """A process in the middle of writing `target` with `atomic_path`: the process, its
    temporary folder (kill the process to leave it as a killed stage does) and, with `fork`,
    the pid of a child it forked meanwhile (as ingest's pool workers are), else 0."""
    code = textwrap.dedent("""
        import os, sys, time
        from rarespecies.core.files import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            tmp.mkdir()
            (tmp / "part.jpg").write_bytes(bytes(1000))
            child = 0
            if sys.argv[2] == "1":
                started, ready = os.pipe()
                child = os.fork()
                if child == 0:  # fork's handlers have run once the child runs its own code
                    os.write(ready, b"1")
                    time.sleep(600)
                    os._exit(0)
                os.read(started, 1)
            print(tmp.parent, child, flush=True)
            time.sleep(600)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(target), str(int(fork))],
                            stdout=subprocess.PIPE, text=True)
    temporary, _, child = proc.stdout.readline().strip().rpartition(" ")  # "" if it failed
    if not (Path(temporary).is_dir() and Path(temporary).parent == target.parent):
        proc.kill()
        raise AssertionError(f"the writer of {target} did not start: {temporary!r}")
    return proc, Path(temporary), int(child)


def killed_writer(target: Path) -> Path:
    """The temporary folder a writer of `target` leaves when it is killed (SIGKILL)."""
    proc, temporary, _ = start_writer(target)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return temporary


# The mini ConvNeXt of the export tests (tests/export/test_portable.py, test_consumers.py).
MINI_SIZE, MINI_CLASSES = 32, 5


def mini_convnext_parts():
    """The mini ConvNeXt's backbone (float pixels -> 64 pooled features) and its GELU head
    (features -> 5 probabilities); the same weights every call."""
    import keras
    from keras.src.applications import convnext as keras_convnext

    from rarespecies.modeling.backbones import to_depthwise

    keras.utils.set_random_seed(7)
    backbone = to_depthwise(keras_convnext.ConvNeXt(
        depths=[1, 1, 1, 1], projection_dims=[8, 16, 32, 64], include_top=False, pooling="avg",
        input_shape=(MINI_SIZE, MINI_SIZE, 3), weights=None, name="mini_convnext"))
    head = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="gelu"),
                             keras.layers.Dense(MINI_CLASSES, activation="softmax")])
    return backbone, head


def mini_convnext_keras():
    """ConvNeXt with one block per stage and 8-64 channels and a GELU head, as the export's
    Keras inference model (uint8 pixels in, probabilities out); the same weights every call."""
    from rarespecies.export.convert import inference_model

    return inference_model(*mini_convnext_parts(), MINI_SIZE)


@pytest.fixture(scope="session")
def mini_convnext_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini ConvNeXt through `convert_to_onnx`, as the export stage writes it.

    Same op kinds as the shipped ConvNeXtBase export (uint8 input and its Cast, depthwise
    Conv, LayerNormalization, 4-D MatMul, GELU via Erf, Softmax), a few hundred kB, converted
    in seconds instead of ConvNeXtTiny's minute.
    """
    from rarespecies.export.convert import convert_to_onnx

    path = tmp_path_factory.mktemp("mini_convnext") / "model.onnx"
    return convert_to_onnx(mini_convnext_keras(), path, 17,
                           {"labels": '["a", "b", "c", "d", "e"]'})


@pytest.fixture(scope="session")
def mini_pixels() -> np.ndarray:
    """Twelve random uint8 images at the mini model's size."""
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (12, MINI_SIZE, MINI_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def grafted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The mini ConvNeXt's backbone converted alone, its head grafted on; its Keras model."""
    import json

    import keras

    from rarespecies.export.convert import inference_model
    from rarespecies.export.graft import convert_backbone, graft

    folder = tmp_path_factory.mktemp("graft")
    backbone, head = mini_convnext_parts()
    weights = folder / "backbone.weights.h5"
    cast = keras.Sequential([keras.Input((MINI_SIZE, MINI_SIZE, 3), dtype="uint8"),
                             keras.layers.Lambda(lambda x: keras.ops.cast(x, "float32")),
                             backbone])
    backbone.save_weights(weights)
    graph = convert_backbone(backbone, MINI_SIZE, weights, folder / "backbone.onnx", 17,
                             {"backbone": "mini"})
    metadata = {"labels": json.dumps(list("abcde"))}
    model = graft(graph, head, weights, folder / "model.onnx", 17, metadata)
    return {"folder": folder, "metadata": metadata, "weights": weights, "backbone": graph,
            "model": model, "keras": inference_model(backbone, head, MINI_SIZE), "head": head,
            "features": lambda pixels: cast.predict(pixels, verbose=0)}
