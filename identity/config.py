"""All configuration: one pydantic-settings class made of one group per component.

Each component receives only its group (`settings.pipeline`, `settings.store`,
`settings.index`, `settings.cluster`, `settings.api`, `settings.workers`); `data_dir`,
shared by all of them, stays at the top.

Every setting has two spellings, and both are accepted everywhere:
- grouped: `IDENTITY_INDEX__TYPE=hnsw`, `[index] type = "hnsw"` in the TOML file,
  `Settings(index={"type": "hnsw"})`;
- flat (the group's field under its flat name, which is the alias where a field has one):
  `IDENTITY_INDEX_TYPE=hnsw`, `index_type = "hnsw"`, `Settings(index_type="hnsw")`.
Flat names are unique across groups, so they stay unambiguous; the grouped spelling wins
when one source gives both.

Sources, highest priority first: keyword arguments, `IDENTITY_*` environment variables,
a `.env` file, the TOML file named by `IDENTITY_CONFIG` (or `./identity.toml` when
present), then the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from identity.vocabulary import FaceDetector

ENV_PREFIX = "IDENTITY_"
ENV_FILE = ".env"


def _config_file() -> Path | None:
    named = os.environ.get("IDENTITY_CONFIG")
    if named:
        return Path(named)
    local = Path("identity.toml")
    return local if local.is_file() else None


class _Group(BaseModel):
    # validate_by_name: a group accepts its fields by name (grouped spelling) and by
    # alias (the flat name), so `{"type": "hnsw"}` and `{"index_type": "hnsw"}` both work.
    model_config = ConfigDict(
        extra="ignore", validate_by_name=True, validate_by_alias=True, protected_namespaces=()
    )


class PipelineSettings(_Group):
    """The face pipeline: which model, on which device, how images are decoded, detected, aligned and embedded."""

    model: str = Field("facenet-keras-128-tight", description="Embedding model name (see `identity models list`).")
    models_dir: Path = Field(Path("models"), description="Where weight files are looked for and fetched to.")
    cache_dir: Path | None = Field(
        None,
        description="Where converted weights are cached; default: next to the source file when "
        "that directory is writable, else the user cache directory.",
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    detector: FaceDetector = Field(
        FaceDetector.mtcnn, description="'mtcnn' (facenet-pytorch's, the default) or 'scrfd' "
        "(InsightFace's SCRFD-500M, faster on CPU; weights: scrfd_500m_bnkps.onnx in models_dir, "
        "non-commercial licence). BENCHMARKS.md, 'Face pipeline throughput', compares them.")
    scrfd_max_side: int = Field(
        640, ge=64, description="SCRFD sees the working image downscaled to at most this side "
        "(never upscaled).")
    scrfd_min_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="Faces SCRFD scores below this are dropped (InsightFace's default).")
    min_face_size: int = Field(20, ge=8, description="Smallest face MTCNN looks for, in working-image pixels.")
    detection_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    scale_factor: float = Field(0.709, gt=0.1, lt=1.0)
    min_detection_probability: float = Field(
        0.95, ge=0.0, le=1.0, description="Faces MTCNN scores below this are dropped (0.9 admits false faces on misc/nonface)."
    )
    detect_max_side: int = Field(
        1600, ge=160, description="Images are decoded (JPEG draft mode) and detected at most this large."
    )
    max_image_pixels: int = Field(
        64_000_000, description="Images declaring more pixels are refused (decompression-bomb guard)."
    )
    alignment: Literal["crop", "similarity"] | None = Field(
        None,
        description="Unset: the model's own (models/manifest.toml). 'similarity': 5-landmark similarity "
        "transform onto the model's template; 'crop': facenet's margin crop.",
    )
    margin: int = Field(32, ge=0, description="Crop margin in output-crop pixels (facenet-pytorch semantics, scale-invariant).")
    flip: bool = Field(True, description="Add the embedding of the mirrored crop before normalising.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "auto", description="What the embedding network computes in. 'auto': bf16 on a CPU with hardware "
        "bf16 (AVX512-BF16 or AMX), fp32 elsewhere (GPUs included). bf16 is about twice as fast there, with "
        "lfw-dev accuracy unchanged (BENCHMARKS.md, 'Precision'); 'fp32' or 'bf16' forces one.")
    batch_size: int = Field(32, ge=1, description="Images per detection batch and crops per embedding batch.")
    decode_workers: int = Field(2, ge=0, description="Threads decoding images ahead of the model.")
    detect_workers: int = Field(
        2, ge=0, description="Threads each taking whole batches through detection and embedding, side by side.")
    torch_threads: int | None = Field(
        None, ge=1, description="Torch threads per op; default on CPU: half the cores (the "
        "detection and embedding stages run concurrently).")
    keep_freed_mb: int = Field(
        256, ge=0, description="Memory a batch frees, up to this many MB, stays in the process for the "
        "next batch instead of being returned to the kernel and faulted back in (glibc; a tenth of the "
        "pipeline's CPU time). 0: the C library's defaults.")
    threshold_level: Literal["loose", "normal", "strict"] = "normal"


class StoreSettings(_Group):
    """PostgreSQL: where it is, its pool, and what is kept beside each face."""

    database_url: str | None = Field(
        None, description="PostgreSQL URL; unset starts the embedded server under data_dir."
    )
    db_pool_min: int = 1
    db_pool_max: int = 8
    embedded_watch_seconds: float = Field(
        2.0, gt=0, description="How often a process using the embedded PostgreSQL checks that its "
        "postmaster is alive, restarting it when it is not.")
    chips: bool = Field(
        True, description="Keep a small JPEG chip of every enrolled face (table face_chips, about "
        "10 kB a face, 10 GB per million, at the defaults: BENCHMARKS.md, 'Face chips'); false "
        "enrolls without them (`identity faces backfill-chips` adds them later).")
    chip_size: int = Field(224, ge=160, le=256, description="Chip side in pixels (the chip spans twice the face box).")
    chip_quality: int = Field(85, ge=50, le=95, description="Chip JPEG quality.")


class IndexSettings(_Group):
    """The FAISS mirror: which index, its parameters, and how it follows the store."""

    type: Literal["auto", "flat", "ivf", "ivfpq", "hnsw", "hnsw-sq8"] = Field("auto", alias="index_type")
    exact_max: int = Field(
        2_000_000, alias="index_exact_max", description="With index_type=auto, exact search up to this many faces."
    )
    memory_budget_mb: int | None = Field(
        None, alias="index_memory_budget_mb", ge=1, description="Memory the search index may use, in MiB; unset: half the machine's RAM. "
        "With index_type=auto it decides exact / HNSW / IVF-Flat / IVF-PQ and the PQ code size."
    )
    nlist: int | None = Field(None, alias="index_nlist")
    nprobe: int | None = Field(None, alias="index_nprobe")
    pq_m: int | None = Field(None, alias="index_pq_m")
    hnsw_m: int = Field(32, alias="index_hnsw_m")
    ef_search: int | None = Field(
        None, alias="index_ef_search", ge=1, description="HNSW search breadth; unset: grows with the square root of the size "
        "(hnsw-sq8: 16 at 100k faces, 32 at 1M; float32 hnsw: 32 at 100k, about 100 at 1M)."
    )
    ef_construction: int = Field(
        160, alias="index_ef_construction", ge=8, le=1024, description="HNSW build breadth: a larger one "
        "builds a better graph (the same recall at a smaller efSearch), more slowly."
    )
    rerank_factor: int = Field(
        2, alias="index_rerank_factor", ge=1, le=64, description="hnsw-sq8: candidates re-scored exactly "
        "from the float32 rows per query, as a multiple of k."
    )
    use_gpu: bool = Field(True, alias="index_use_gpu")
    search_k: int = Field(5, ge=1, le=1000)
    poll_seconds: float = Field(
        1.0, alias="index_poll_seconds", gt=0, description="The index follower re-reads the change log at least this often "
        "(LISTEN/NOTIFY wakes it sooner; polling is the safety net for a lost notification)."
    )
    snapshot_changes: int = Field(
        50_000, alias="index_snapshot_changes", ge=1, description="Write a new index snapshot after this many applied changes."
    )
    mmap_snapshot: bool = Field(
        True, alias="index_mmap_snapshot", description="Map a flat or HNSW snapshot from its file "
        "read-only instead of reading it into memory: the API's worker processes then share one "
        "copy in the page cache, until a process applies its first change to the index (it then "
        "takes a private copy). False: every process reads its own copy."
    )


class ClusterSettings(_Group):
    """Clustering: the method and its parameters (unset ones come from the model's calibration)."""

    algorithm: Literal["components", "chinese_whispers", "dbscan", "hdbscan"] = Field(
        "hdbscan", alias="cluster_algorithm", description="Default clustering method (chosen by BCubed F1 on lfw-dev, BENCHMARKS.md)."
    )
    threshold: float | None = Field(
        None, alias="cluster_threshold", ge=-1.0, le=1.0, description="Unset: the model's calibrated floor. Cosine similarity at "
        "which two faces are linked (HDBSCAN: the least similarity a face needs to a cluster-mate)."
    )
    hubness: bool | None = Field(
        None, alias="cluster_hubness", description="Unset: the model's calibration. Take each face's typical "
        "similarity to other people out of its kNN similarities before clustering (identity.cluster.hubness)."
    )
    min_samples: int = Field(1, alias="cluster_min_samples", ge=1, description="HDBSCAN/DBSCAN density parameter (counts the face itself).")
    k: int = Field(20, alias="cluster_k", ge=2, le=1000, description="Neighbours per face in the kNN graph.")
    min_size: int = Field(2, alias="cluster_min_size", ge=1, description="Smaller groups are reported as unclustered.")
    min_face_size: float = Field(0.0, alias="cluster_min_face_size", ge=0, description="Skip faces whose box is shorter (px); 0 = off.")
    min_probability: float = Field(0.0, alias="cluster_min_probability", ge=0, le=1, description="Skip faces below this detection probability.")
    min_blur: float = Field(
        10.0, alias="cluster_min_blur", ge=0, description="Skip crops whose variance of the Laplacian (160 px crop) is below this; 0 = off."
    )


class ApiSettings(_Group):
    """The HTTP API: where it listens, what a request may send, and how fast."""

    host: str = Field("127.0.0.1", alias="api_host")
    port: int = Field(8000, alias="api_port")
    workers: int = Field(1, alias="api_workers", ge=1, description="uvicorn worker processes for `identity serve`.")
    allowed_roots: list[Path] = Field(
        default_factory=list, description="Server-side directories the API may read for bulk jobs."
    )
    max_upload_bytes: int = 20 * 1024 * 1024
    max_images_per_request: int = 32
    max_archive_bytes: int = Field(
        512 * 1024 * 1024, description="Uncompressed size limit of an uploaded job archive (zip-bomb "
        "guard), counted while its entries are read, not taken from its headers; one entry may be at "
        "most max_upload_bytes."
    )
    max_archive_entries: int = Field(
        10_000, ge=1, description="Entries (of any kind) an uploaded job archive may hold.")
    spool_quota_bytes: int = Field(
        2 * 1024**3, ge=0, description="Total bytes uploads may hold in data_dir/uploads while their "
        "request or job runs (archives, cluster uploads, photos for a worker); past it uploads "
        "are answered 507.")
    rate_limit_read: str = Field(
        "600/minute", description="Requests a read-scope API key may make, in the `limits` "
        "package's notation ('600/minute', '20/second;600/minute'); empty: unlimited.")
    rate_limit_enroll: str = Field("600/minute", description="The same for enroll-scope keys.")
    rate_limit_admin: str = Field("1200/minute", description="The same for admin-scope keys.")
    rate_limit_storage: str = Field(
        "memory://", description="Where rate-limit counters live (`limits` storage URL): memory:// "
        "counts per API process; a redis:// URL shares them between processes and replicas.")
    cache_seconds: float = Field(
        60.0, ge=0, description="API keys and the names of persons in search results are kept in "
        "each API process's memory and dropped when the database announces a change (a revoked "
        "key stops working, a rename shows, within milliseconds: identity/store/readcache.py); "
        "nothing is served from memory while the announcements cannot arrive, and an entry is "
        "read again after this many seconds, the bound should one be lost all the same. "
        "0: no cache, every request reads the database.")
    access_log: bool = Field(
        False, description="Log a line per request (uvicorn's access log). Off by default: "
        "on the search path it costs several percent of the CPU; /metrics counts requests by "
        "route and status either way, and errors are always logged.")


class WorkerSettings(_Group):
    """Batch work: the Celery broker, its tasks, and how jobs are watched and resumed."""

    broker_url: str | None = Field(None, description="Celery broker (Redis); unset runs work in-process.")
    task_visibility_timeout: int = Field(
        3600, ge=1, description="Seconds before Redis hands an unacknowledged task (its worker died) "
        "to another worker; must exceed the longest batch."
    )
    task_max_retries: int = Field(5, ge=0, description="Retries (with exponential backoff) of a task "
                                  "whose database or broker was unavailable.")
    job_batch_size: int = Field(16, ge=1, description="Images per worker task in a bulk enrollment job.")
    enroll_wait_seconds: float = Field(
        10.0, gt=0, le=300, description="With a broker, how long a synchronous upload "
        "(POST /v1/persons/{person}/faces) waits for a worker before answering 202 with a job to follow.")
    worker_wait_seconds: float = Field(
        10.0, gt=0, description="With a broker, how long `identity enroll` waits without progress "
        "and without a live worker (Celery's ping) before it gives up with exit 4.")
    job_heartbeat_seconds: float = Field(
        10.0, gt=0, description="How often a process driving a job marks it alive, and how often "
        "the API looks for jobs whose owner is gone.")
    job_owner_timeout_seconds: float = Field(
        60.0, gt=0, description="A job whose owner has not marked it alive for this long is taken "
        "over (sooner on the owner's own machine, where a dead pid is seen at once).")
    job_max_resumes: int = Field(
        3, ge=0, description="Times a job whose process died is resumed by the next API start; "
        "past that (or 0) it is marked failed with the reason.")

GROUPS: dict[str, type[_Group]] = {
    "pipeline": PipelineSettings,
    "store": StoreSettings,
    "index": IndexSettings,
    "cluster": ClusterSettings,
    "api": ApiSettings,
    "workers": WorkerSettings,
}

# flat name -> (group, field)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    (info.alias or field): (group, field)
    for group, model in GROUPS.items()
    for field, info in model.model_fields.items()
}


def group_flat(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every flat name moved into its group; grouped values win over flat
    ones for the same field, other keys pass through."""
    grouped: dict[str, Any] = {}
    flat: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        target = FLAT_NAMES.get(key.lower()) if isinstance(key, str) else None
        if target is None:
            grouped[key] = value
        else:
            group, field = target
            flat.setdefault(group, {})[field] = value
    for group, fields in flat.items():
        given = grouped.get(group)
        if isinstance(given, BaseModel):
            given = given.model_dump(exclude_unset=True)
        grouped[group] = {**fields, **(given or {})}
    return grouped


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILE,
        env_nested_delimiter="__",
        extra="ignore",
        protected_namespaces=(),
    )

    data_dir: Path = Field(
        Path(platformdirs.user_data_dir("identity")),
        description="Embedded database, index snapshots, job reports and upload spools live here.",
    )
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)

    def __init__(self, **values: Any) -> None:
        # pydantic-settings drops keyword arguments that are not fields: group the flat
        # ones first. (Keys starting with "_" are pydantic-settings' own options.)
        super().__init__(**group_flat(values))

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with `changes` (flat or grouped names) applied; what was
        set explicitly stays set, so model defaults still defer the same way."""
        update: dict[str, Any] = {}
        for name, value in group_flat(changes).items():
            current = getattr(self, name, None)
            if isinstance(current, _Group):
                if isinstance(value, BaseModel):
                    value = value.model_dump(exclude_unset=True)
                update[name] = type(current).model_validate(
                    {**current.model_dump(exclude_unset=True), **value}
                )
            elif name in type(self).model_fields:
                annotation = type(self).model_fields[name].annotation
                update[name] = TypeAdapter(annotation).validate_python(value)
            else:
                raise TypeError(f"unknown setting {name!r}")
        return self.model_copy(update=update)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        flat = _flat_settings_class()
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _Flat(settings_cls, EnvSettingsSource(flat, env_prefix=ENV_PREFIX)),
            dotenv_settings,
            _Flat(settings_cls, DotEnvSettingsSource(flat, env_file=ENV_FILE, env_prefix=ENV_PREFIX)),
        ]
        toml = _config_file()
        if toml is not None:
            sources.append(_TomlSource(settings_cls, toml))
        sources.append(file_secret_settings)
        return tuple(sources)


class _WholeSource(PydanticBaseSettingsSource):
    """A source that answers for every field at once, in `__call__`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused


class _Flat(_WholeSource):
    """Another source's flat names, grouped."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.inner = inner

    def __call__(self) -> dict[str, Any]:
        return group_flat(self.inner())


class _TomlSource(_WholeSource):
    """The TOML file: tables per group, or flat names at the top, or both."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def __call__(self) -> dict[str, Any]:
        with self.path.open("rb") as handle:
            return group_flat(tomllib.load(handle))


@lru_cache(maxsize=1)
def _flat_settings_class() -> type[BaseSettings]:
    """A settings class whose fields are the flat names, typed as their group fields, so
    pydantic-settings reads and decodes `IDENTITY_BATCH_SIZE` & co. as it would a field."""
    fields: dict[str, Any] = {}
    for flat, (group, field) in FLAT_NAMES.items():
        fields[flat] = (GROUPS[group].model_fields[field].annotation, None)
    return create_model(  # type: ignore[call-overload,no-any-return]
        "FlatSettings",
        __base__=BaseSettings,
        __config__=None,
        **fields,
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own `Settings`)."""
    return Settings()
