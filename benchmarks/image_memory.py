"""Peak memory of decoding the worst image `ingest.max_pixels` admits: a 16-bit RGBA PNG of
exactly that many pixels (4 bytes a pixel once decoded, alpha composited on white), plain and
EXIF-rotated (the rotation makes one more copy).

Each measurement runs in its own process and reads that process tree's peak resident memory
from the kernel (wait4's rusage): the decode alone (`open_rgb`), one ingest worker (the stage's
own code on a one-image data folder) and `rarespecies predict`. The image is generated in a
temporary folder (about 1 MB on disk: one colour compresses well).

    python benchmarks/image_memory.py [--max-pixels 100000000] [--model export/model.onnx]

Without an exported model, `predict` runs a stand-in model that has the pipeline's metadata
but no weights: add the real model's own footprint (about its file size, and its activations).
"""

from __future__ import annotations

import csv
import math
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import typer

from rarespecies.runtime.images import MAX_PIXELS

BUDGET = 2 * 10**9  # bytes: 2 GB
app = typer.Typer(add_completion=False)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def worst_png(path: Path, pixels: int, rotated: bool = False) -> tuple[int, int]:
    """Write a 16-bit RGBA PNG of at most `pixels` pixels (as square as the count allows).

    Args:
        path: the file to write.
        pixels: pixel count aimed at.
        rotated: add an EXIF orientation 6 (rotate 90 degrees when displayed).

    Returns:
        Its (width, height).
    """
    width = math.isqrt(pixels)
    height = pixels // width
    # One half-transparent colour: the file stays small (runs compress), the decode is the same.
    line = b"\x00" + struct.pack(">4H", 60000, 30000, 10000, 32768) * width  # filter 0
    packer = zlib.compressobj(6)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)))
        if rotated:  # TIFF-style EXIF: one IFD entry, Orientation (0x0112) = 6
            out.write(_chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x01"
                             b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"))
        for _ in range(height):
            if data := packer.compress(line):
                out.write(_chunk(b"IDAT", data))
        out.write(_chunk(b"IDAT", packer.flush()))
        out.write(_chunk(b"IEND", b""))
    return width, height


def stand_in_model(path: Path, max_side: int = 512, input_size: int = 224) -> None:
    """An ONNX model with the pipeline's metadata and no weights (mean colour, softmax)."""
    import onnx
    from onnx import TensorProto, helper

    labels = ["a_family", "b_family", "c_family"]
    graph = helper.make_graph(
        [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("Softmax", ["mean"], ["probabilities"], axis=1)],
        "stand_in",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                       [None, input_size, input_size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"labels": str(labels).replace("'", '"'), "input_size": input_size,
                       "normalize_max_side": max_side}.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, path)


def peak_rss(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run a command; its process tree's peak resident bytes and its output."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{output[-2000:]}")
    return usage.ru_maxrss * 1024, output.strip()  # Linux reports KiB


DECODE = """
import sys
from rarespecies.runtime.images import open_rgb
img, size = open_rgb(sys.argv[1], 512, int(sys.argv[2]))
print(f"decoded {size[0]}x{size[1]} to {img.size[0]}x{img.size[1]}")
"""

INGEST = """
import resource, sys
from pathlib import Path
from rarespecies.data.ingest import ingest
report = ingest(Path("data"), Path("out/images"), Path("out/manifest.csv"),
                Path("out/ingest.json"), max_side=512, max_pixels=int(sys.argv[1]),
                jpeg_quality=95, workers=1, progress=False)
assert report["ingested"] == 1, report["quarantine"]
worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(f"ingested {report['ingested']}; worker peak {worker / 1e6:.0f} MB")
"""


@app.command()
def main(max_pixels: int = MAX_PIXELS, model: Path = Path("export/model.onnx"),
         keep: bool = False) -> None:
    """Print the peak memory of each consumer on the worst admitted image, and its share of
    the 2 GB budget."""
    work = Path(tempfile.mkdtemp(prefix="image_memory."))
    python = sys.executable
    rarespecies = str(Path(python).parent / "rarespecies")
    if not model.is_file():
        model = work / "stand_in.onnx"
        stand_in_model(model)
        print(f"no exported model: predict runs a stand-in without weights ({model})")
    print(f"max_pixels {max_pixels:,}; budget {BUDGET / 1e9:.0f} GB; work folder {work}")
    print(f"{'image':<34} {'consumer':<14} {'peak RSS':>10} {'of budget':>10}  note")
    for rotated in (False, True):
        folder = work / ("rotated" if rotated else "plain")
        (folder / "data/chordata_test").mkdir(parents=True)
        image = folder / "data/chordata_test/1_1_eol-full-size-copy.png"
        width, height = worst_png(image, max_pixels, rotated)
        with (folder / "data/metadata.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rare_species_id", "eol_content_id", "eol_page_id", "kingdom",
                             "phylum", "family", "file_path"])
            writer.writerow(["worst", "1", "1", "animalia", "chordata", "test",
                             image.relative_to(folder / "data").as_posix()])
        name = (f"{width}x{height} RGBA16 {image.stat().st_size / 2**20:.1f} MB"
                + (" rotated" if rotated else ""))
        runs = {
            "open_rgb": [python, "-c", DECODE, str(image), str(max_pixels)],
            "ingest worker": [python, "-c", INGEST, str(max_pixels)],
            "predict": [rarespecies, "predict", str(model.resolve()), str(image)],
        }
        for consumer, args in runs.items():
            peak, output = peak_rss(args, folder)
            print(f"{name:<34} {consumer:<14} {peak / 1e6:>7.0f} MB {peak / BUDGET:>9.0%}  "
                  f"{output.splitlines()[-1][:60]}")
    if not keep:
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    app()
