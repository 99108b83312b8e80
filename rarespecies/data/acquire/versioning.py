"""Versioning data/ with DVC: `dvc add` after an acquisition, and making data/ match data.dvc."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rarespecies.config import paths
from rarespecies.core.dvc import dvc


class DataError(RuntimeError):
    """data/ cannot be versioned, or brought in line with data.dvc."""


def data_matches(target: Path = paths.DATA_DVC) -> bool:
    """True when the folder `target` pins holds exactly what it pins.

    Hashes the workspace with DVC itself; unlike `dvc status`, this also answers on a fresh
    clone whose DVC cache is still empty.
    """
    from dvc.repo import Repo

    with Repo() as repo:
        (stage,) = repo.stage.collect(str(target))
        return all(out.exists and out.get_hash() == out.hash_info for out in stage.outs)


def version(folder: Path) -> str:
    """`dvc add` the folder, so the pipeline and git see exactly this version of the data.

    Returns:
        What to do next, in one line.

    Raises:
        DataError: DVC failed (e.g. not inside the project).
    """
    proc = dvc("add", "--quiet", str(folder))
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise DataError(f"`dvc add {folder}` failed ({reason}): run this inside the project (a "
                        "DVC repository), or pass --no-version")
    return f"versioned {folder}/ with DVC: commit {folder}.dvc to record this data version"


def ensure_data(regenerate: Callable[[], object], say: Callable[[str], object] = print) -> None:
    """Make data/ match data.dvc: keep it, `dvc pull` it, or regenerate the sample.

    Args:
        regenerate: writes the embedded sample into data/.
        say: reports what was done.

    Raises:
        DataError: data.dvc pins other data than the sample and no remote provides it.
    """
    has_remote = bool(dvc("remote", "list").stdout.strip())
    if data_matches():
        say("data/ matches data.dvc")
    elif has_remote and dvc("pull", str(paths.DATA_DVC)).returncode == 0 and data_matches():
        say("data/ pulled from the DVC remote")
    else:
        if has_remote:
            say("the DVC remote could not provide data/; regenerating the sample")
        regenerate()
        if not data_matches():
            raise DataError("data/ does not match data.dvc after regenerating the sample: "
                            "data.dvc pins other data; `dvc pull` it from its remote or "
                            "`dvc add data` to version what is there")
    # Fill the DVC cache too (a no-op when it holds the data), so `dvc push`, `dvc checkout`
    # and `dvc status` work from here on.
    dvc("commit", "--force", "--quiet", str(paths.DATA_DVC))
