"""Save a Keras model as a `.keras` file whose bytes depend only on the model.

Keras stamps every save with the time (`date_saved` in metadata.json, the zip entry dates)
and writes Python object ids as `shared_object_id` in config.json. So two identical trainings
give files with different hashes: DVC reruns everything downstream, and a worker never finds
another worker's result in the shared run cache. This module rewrites the archive with those
three things made stable; Keras loads it as before.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras

from rarespecies.core.files import atomic_path

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


def save_keras(model: keras.Model, path: str | Path) -> None:
    """Save `model` to `path` (`.keras`) atomically and byte-reproducibly.

    Args:
        model: the model to save.
        path: the target file; it is replaced only once the new file is complete.
    """
    with atomic_path(path) as tmp:
        raw = tmp.with_name(f"raw-{tmp.name}")
        model.save(raw)
        with zipfile.ZipFile(raw) as source, zipfile.ZipFile(tmp, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_renumber_shared_objects(json.loads(data))).encode()
                entry = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
                entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
                target.writestr(entry, data)


def _renumber_shared_objects(config: Any) -> Any:
    """Replace `shared_object_id` values (memory addresses) by 1, 2, ... in order of use.

    The ids only pair up references to one object inside the file, so any one-to-one
    renaming loads the same model.
    """
    numbers: dict[Any, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "shared_object_id" in node:
                node["shared_object_id"] = numbers.setdefault(node["shared_object_id"],
                                                              len(numbers) + 1)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return config
