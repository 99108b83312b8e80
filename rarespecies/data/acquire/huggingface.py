"""Download the Rare Species dataset from the Hugging Face Hub (`rarespecies acquire huggingface`).

Fetches `dataset/<taxa>/*.jpg` and `metadata/*.csv` of the dataset repo `imageomics/rare-species`
at a pinned commit into the data folder, in the Hub's own layout. The download goes to a
temporary sibling of the data folder and only replaces it once it is complete, so an interrupted
or failed download never leaves a half-filled data folder behind.

`REVISION` is the pinned commit, so that every machine gets the same images. To move to a newer
version of the dataset, pick a commit from
https://huggingface.co/datasets/imageomics/rare-species/commits/main, set `REVISION` to its full
hash (or pass `revision=` once to try it), download again with `force=True` and re-track the data
folder with DVC.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub import errors as hf
from huggingface_hub.utils import tqdm as hf_tqdm

REPO_ID = "imageomics/rare-species"
REVISION = "04c6e31a2858d4ccdc5fcdd6215b077764daec1b"  # pinned commit of REPO_ID, see above
DATASET_URL = f"https://huggingface.co/datasets/{REPO_ID}"
ALLOW_PATTERNS = ["dataset/**", "metadata/*.csv"]
CATALOG = "metadata/rarespecies-catalog.csv"


class AcquireError(RuntimeError):
    """The dataset could not be downloaded; the message names the cause and the fix.

    `transient`: the cause may be gone on a later try (network, Hub busy or failing).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class _QuietTqdm(hf_tqdm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})


def download_dataset(data_dir: Path, *, revision: str = REVISION, endpoint: str | None = None,
                     token: str | None = None, force: bool = False,
                     progress: bool = True) -> dict:
    """Download the dataset's images and metadata into `data_dir`, in the Hugging Face layout.

    Args:
        data_dir: destination folder; replaced as a whole, never merged into.
        revision: commit, branch or tag of the dataset repo (default: the pinned `REVISION`).
        endpoint: Hub URL (default: `HF_ENDPOINT` or https://huggingface.co).
        token: Hugging Face token (default: `HF_TOKEN` or the `hf auth login` token).
        force: replace a non-empty `data_dir` instead of refusing.
        progress: show the download progress bars.

    Returns:
        Summary: repo id, requested revision, resolved commit, images, catalogue rows, bytes, path.

    Raises:
        AcquireError: the download failed or `data_dir` is in the way; nothing was changed.
    """
    data_dir = Path(data_dir).absolute()
    hub = (endpoint or constants.ENDPOINT).rstrip("/")
    _check_target(data_dir, force)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling of data_dir, so the final renames stay on one filesystem.
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.hf-", dir=data_dir.parent))
    try:
        # One un-retried call first: it fails fast when the Hub is unreachable (the tree listing
        # inside snapshot_download retries for ~25 s) and resolves branches to a commit.
        info = HfApi(endpoint=endpoint, token=token).dataset_info(
            REPO_ID, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT, expand=["sha"])
        commit = info.sha or revision
        # cache_dir inside staging: nothing is written to the user's Hub cache.
        snapshot = Path(snapshot_download(
            REPO_ID, repo_type="dataset", revision=commit, local_dir=staging / "snapshot",
            cache_dir=staging / "cache", allow_patterns=ALLOW_PATTERNS, endpoint=endpoint,
            token=token, tqdm_class=None if progress else _QuietTqdm))
        shutil.rmtree(snapshot / ".cache", ignore_errors=True)
        summary = _summarise(snapshot, revision)
        _check_target(data_dir, force)
        # Outside staging, so that a failed restore can never delete the old data.
        aside = staging.with_name(f"{staging.name}-old")
        if data_dir.exists():
            data_dir.rename(aside)
        try:
            snapshot.rename(data_dir)
        except BaseException:
            if aside.exists():
                aside.rename(data_dir)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except AcquireError:
        raise
    except Exception as error:
        raise AcquireError(_explain(error, hub, revision), _transient(error)) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"repo_id": REPO_ID, "revision": revision, "commit": commit, **summary,
            "path": str(data_dir)}


def _check_target(data_dir: Path, force: bool) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        raise AcquireError(f"{data_dir} exists and is not a folder; move it away first")
    if not force and data_dir.is_dir() and any(data_dir.iterdir()):
        raise AcquireError(f"{data_dir} is not empty; pass --force to replace it (the download "
                           "goes to a temporary folder first) or choose another folder")


def _summarise(snapshot: Path, revision: str) -> dict:
    images = list(snapshot.glob("dataset/*/*.jpg"))
    if not (snapshot / CATALOG).is_file() or not images:
        missing = CATALOG if not (snapshot / CATALOG).is_file() else "dataset/<taxa>/*.jpg"
        raise AcquireError(f"the download of {REPO_ID} at revision {revision} has no {missing}: "
                           "its layout is not the expected one; pin a revision that has "
                           f"{CATALOG} and dataset/<taxa>/*.jpg (see {DATASET_URL})")
    with (snapshot / CATALOG).open(newline="") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    size = sum(path.stat().st_size for path in snapshot.rglob("*") if path.is_file())
    return {"images": len(images), "catalog_rows": rows, "bytes": size}


def _explain(error: Exception, hub: str, revision: str) -> str:
    """One line naming the cause of a failed download and its fix."""
    status = error.response.status_code if isinstance(error, hf.HfHubHTTPError) else None
    if isinstance(error, hf.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set; unset it to download the dataset"
    # RevisionNotFound first: the Hub also answers 404 for a missing revision; a plain 404
    # from a mirror's revision endpoint means the same.
    if isinstance(error, hf.RevisionNotFoundError) or (
            status == 404 and "/revision/" in str(error.response.url)):
        return (f"revision {revision!r} of {REPO_ID} was not found at {hub}; check it on "
                f"{DATASET_URL}/commits/main or pass another revision (pinned: {REVISION})")
    if isinstance(error, hf.RepositoryNotFoundError) or status in (401, 403):
        return (f"access to {DATASET_URL} was refused (HTTP {status}): the dataset is gated, "
                "private or missing for you; accept its terms on that page, then set HF_TOKEN "
                "or run `hf auth login`")
    if isinstance(error, hf.RemoteEntryNotFoundError):
        return (f"{error.response.url} is listed in {REPO_ID} at revision {revision} but could "
                f"not be downloaded from {hub}; run the command again or pin another revision")
    if isinstance(error, (httpx2.TransportError, hf.LocalEntryNotFoundError)):
        cause = _first_line(error)
        return (f"cannot reach the Hugging Face Hub at {hub} ({cause}); check the network, set "
                "HF_ENDPOINT to a mirror, or use `rarespecies acquire eol --catalog ...` or "
                "`rarespecies acquire sample`")
    return (f"downloading {REPO_ID} at revision {revision} from {hub} failed "
            f"({_first_line(error)}); run the command again")


def _transient(error: Exception) -> bool:
    """Whether a later try may succeed: no connection, or the Hub failing or throttling."""
    status = error.response.status_code if isinstance(error, hf.HfHubHTTPError) else None
    return (isinstance(error, (httpx2.TransportError, hf.LocalEntryNotFoundError))
            or (status or 0) >= 500 or status == 429)


def _first_line(error: BaseException) -> str:
    """The exception's type and first non-blank message line (Hub errors span many lines)."""
    line = next((text.strip() for text in str(error).splitlines() if text.strip()), "")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
