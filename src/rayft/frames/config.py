"""FramesConfig: every key `rayft frames embed|cluster|export` reads, field by field.

One config holds all three steps so a single YAML file (configs/frames.yaml) drives the
whole frames pipeline; each step reads its own section plus the shared ``model`` section.
"""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..config import ConfigError, LocalPath, Section, opt, section
from .segment_config import SegmentSection
from .train_config import TrainSection


class ModelSection(Section):
    name: str = opt("ViT-B-32", "open_clip model name (open_clip.list_models()); tests use ViT-S-32")
    pretrained: str = opt("", "open_clip pretrained tag or a local checkpoint path (e.g. openai, "
                          "laion2b_s34b_b79k); empty = random weights seeded by model.seed (offline)")
    image_size: int = opt(0, "square input size fed to the vision tower; 0 = the model's own "
                          "(224 for ViT-B-32). Smaller sizes trade accuracy for speed", ge=0)
    seed: int = opt(0, "torch seed before building the model, so every actor (and the export "
                    "step's text tower) gets the same random weights when pretrained is empty")
    precision: Literal["fp32", "fp16", "bf16"] = opt("fp32", "weights/compute precision on GPU "
                                                    "(CPU always runs fp32)")
    cache_dir: str = opt("", "where open_clip looks for/stores pretrained weights (empty: its default)")


class EmbedSection(Section):
    input: str = opt("", "root directory of episode folders (each folder of jpg/png/webp frames "
                     "is one episode; nested folders are episodes named by their relative path)")
    output: LocalPath = opt("", "output directory: embeddings/<episode>/part-*.parquet, _done/ markers, "
                      "report.json, rejects.jsonl, model.json")
    extensions: list[str] = opt(["jpg", "jpeg", "png", "webp"], "frame file extensions (case-insensitive)")
    batch_size: int = opt(64, "frames per embedding batch (per actor call)", ge=1)
    decode_batch_size: int = opt(32, "frames per decode task batch", ge=1)
    concurrency: int = opt(0, "embedding actors; 0 = one per GPU when the cluster has GPUs, else 1", ge=0)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda actors when the Ray cluster "
                                                 "has GPUs, else CPU actors")
    actor_num_cpus: float = opt(0.5, "CPUs reserved per embedding actor. Keep it fractional or "
                                "below the node's CPU count so decode tasks can still be scheduled", gt=0)
    actor_memory_gb: float = opt(2.0, "memory reserved per embedding actor (a ViT-B-32 actor holds "
                                 "~1.3 GB on CPU); keeps Ray from packing more actors than fit, "
                                 "and Ray Data's memory warnings quiet. 0 = reserve nothing", ge=0)
    decode_num_cpus: float = opt(0.5, "CPUs reserved per decode task", gt=0)
    threads: int = opt(0, "torch intra-op threads per CPU actor; 0 = os.cpu_count() of the node", ge=0)
    max_image_pixels: int = opt(50_000_000, "reject images with more pixels than this "
                                "(decompression-bomb guard); the header is checked before decoding", ge=1)
    min_side: int = opt(16, "reject images whose shorter side is smaller than this", ge=1)
    rows_per_file: int = opt(50_000, "max rows per Parquet part file within an episode", ge=1)
    max_episodes: int = opt(0, "process at most this many unfinished episodes this run (0 = all)", ge=0)
    progress: bool = opt(True, "show a frames/s progress bar on stderr")
    max_errored_blocks: int = opt(-1, "Ray Data blocks allowed to fail before the job stops; the "
                                  "episodes they held stay unfinished and a rerun retries them "
                                  "(-1 = unlimited, 0 = stop at the first failure)", ge=-1)



class ClusterSection(Section):
    input: str = opt("", "a directory of Parquet files with columns path, episode, embedding (the "
                     "embed output or embeddings made elsewhere); searched recursively")
    output: LocalPath = opt("", "output directory: labels.parquet (path, episode, label), clusters.json")
    pca_dims: int = opt(32, "PCA output dimensions before HDBSCAN; 0 = no reduction", ge=0)
    whiten: bool = opt(True, "divide each principal component by its standard deviation")
    min_cluster_size: int = opt(25, "HDBSCAN min_cluster_size: the smallest group called a character", ge=2)
    min_samples: int = opt(10, "HDBSCAN min_samples (density smoothing; k-th neighbour for core "
                           "distances); 0 = min_cluster_size", ge=0)
    selection: Literal["leaf", "eom"] = opt("leaf", "HDBSCAN cluster selection: leaf keeps the "
                                            "finest dense groups (small characters inside a diffuse "
                                            "background survive); eom prefers big stable clusters")
    method: Literal["sharded", "flat"] = opt("sharded", "sharded = rayft's bounded-memory path (kNN "
                                             "per spatial shard of <= shard_size points, one global "
                                             "tree; a single exact shard for small sets); flat = one "
                                             "fast_hdbscan call over all points (reference; memory "
                                             "grows with n, ~1 min numba compile per process)")
    shard_size: int = opt(16_000, "max points (home + halo) in one neighbour search (bounds memory)", ge=1000)
    halo_frac: float = opt(0.2, "fraction of points copied into a neighbouring shard's halo", ge=0, le=1)
    knn_k: int = opt(0, "neighbours kept per point in the sharded path; 0 = max(2*min_samples, 15)", ge=0)
    refine_rounds: int = opt(3, "cross-shard join rounds after the per-shard searches (neighbours' "
                             "neighbours; repairs points whose true neighbours lie beyond the halo, "
                             "which otherwise can turn whole big clusters into noise); 0 = off", ge=0)
    seed: int = opt(0, "seed for k-means shard centroids and approximate neighbour search")
    read_batch: int = opt(16_384, "rows per Parquet read batch (streaming PCA)", ge=1)
    ray_tasks: Literal["auto", "on", "off"] = opt("auto", "run the sharded path's per-shard neighbour "
                                                  "searches as Ray tasks on every node: auto = when this "
                                                  "process is on a Ray cluster (ray job submit / RAY_ADDRESS) "
                                                  "and there is more than one shard; on = always "
                                                  "(starts a local Ray if needed); off = one after another "
                                                  "in this process")
    task_cpus: float = opt(1.0, "CPUs each neighbour-search task holds (and threads it uses)", gt=0)
    max_tasks: int = opt(0, "neighbour-search tasks at once; 0 = as many as the cluster's CPUs fit "
                         "(each task holds one shard: shard_size points)", ge=0)



DEFAULT_TAGS = ["a person", "a man", "a woman", "a child", "an animal", "a robot", "a monster",
                "a cartoon character", "a red character", "a blue character", "a green character",
                "a yellow character", "close-up", "full body", "indoors", "outdoors", "night", "day",
                "smiling", "angry", "sad", "running", "sitting", "standing"]


class ExportSection(Section):
    input: str = opt("", "the cluster step's output directory (labels.parquet + clusters.json)")
    output: LocalPath = opt("", "output directory: cluster_000/ ... (frames + .txt captions, "
                      "contact_sheet.png), clusters.json, overview.png")
    embeddings: str = opt("", "embeddings Parquet dir for caption tags; empty = the cluster "
                          "step's input recorded in its clusters.json")
    mode: Literal["copy", "symlink", "hardlink"] = opt("copy", "how frames land in cluster folders")
    min_size: int = opt(25, "clusters with fewer frames are skipped and listed in clusters.json", ge=1)
    trigger: str = opt("char{id:03d}", "per-character trigger token, first in every caption "
                       "({id} = cluster number)")
    tags: list[str] = opt(DEFAULT_TAGS, "tag vocabulary scored zero-shot with the CLIP text tower")
    tag_prompt: str = opt("a frame showing {}", "prompt template each tag is inserted into")
    tags_per_frame: int = opt(3, "top tags written into each frame's caption", ge=0)
    tags_per_cluster: int = opt(5, "top tags (mean over the cluster) listed in clusters.json", ge=0)
    sheet_samples: int = opt(36, "frames on each contact sheet (medoid first)", ge=1)
    thumb_size: int = opt(128, "thumbnail edge in pixels on contact sheets and the overview", ge=16)
    overview_samples: int = opt(6, "frames per cluster row in overview.png", ge=1)
    overview_max_clusters: int = opt(60, "clusters shown in overview.png (largest first)", ge=1)
    workers: int = opt(4, "threads copying/linking frames", ge=1)
    seed: int = opt(0, "seed for sampling contact-sheet frames")

    @model_validator(mode="after")
    def _trigger_template(self):
        try:
            self.trigger.format(id=0)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise ConfigError(f"export.trigger: bad template {self.trigger!r}: {e}") from None
        return self


class FramesConfig(Section):
    model: ModelSection = section(ModelSection, "open_clip model shared by embed and export")
    embed: EmbedSection = section(EmbedSection, "rayft frames embed")
    cluster: ClusterSection = section(ClusterSection, "rayft frames cluster")
    export: ExportSection = section(ExportSection, "rayft frames export")
    train: TrainSection = section(TrainSection, "rayft frames train (one LoRA per character folder)")
    segment: SegmentSection = section(SegmentSection, "rayft frames segment (optional: character-only RGBA crops)")
