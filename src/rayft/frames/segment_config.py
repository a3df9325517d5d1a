"""The ``segment`` section of FramesConfig: every key `rayft frames segment` reads.

On the command line ``input=`` and ``output=`` are short aliases for ``segment.input`` and
``segment.output``.
"""
from __future__ import annotations

from ..config import LocalPath, Section, opt


class SegmentSection(Section):
    input: str = opt("", "root directory of episode folders of frames (as for `rayft frames embed`)")
    output: LocalPath = opt("", "output directory: <episode>/<frame>.png RGBA character crops, "
                      "no_foreground.jsonl, rejects.jsonl, segment_report.json")
    model: str = opt("", "path to an ONNX segmentation model (NCHW RGB [0,1] in, foreground probability "
                     "out), e.g. an anime-segmentation ISNet export downloaded once")
    input_size: int = opt(0, "model input size when its ONNX input shape is dynamic (e.g. 1024); "
                          "0 = the model's static shape", ge=0)
    threshold: float = opt(0.5, "mask probability counted as foreground", ge=0, le=1)
    min_foreground: float = opt(0.01, "frames with a smaller foreground fraction are listed in "
                                "no_foreground.jsonl, not written", ge=0, le=1)
    padding: int = opt(8, "pixels kept around the mask's bounding box", ge=0)
    extensions: list[str] = opt(["jpg", "jpeg", "png", "webp"], "frame file extensions (case-insensitive)")
    batch_size: int = opt(8, "frames per actor call", ge=1)
    concurrency: int = opt(0, "segmentation actors; 0 = one per GPU when the cluster has GPUs, else 1", ge=0)
    actor_num_cpus: float = opt(1.0, "CPUs reserved per actor", gt=0)
    threads: int = opt(0, "onnxruntime intra-op threads per actor (0 = its default)", ge=0)
    max_image_pixels: int = opt(50_000_000, "reject frames with more pixels than this (header checked)", ge=1)
