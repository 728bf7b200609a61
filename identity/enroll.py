"""Bulk enrollment: plan the work, run it batch by batch, report every outcome.

The unit of work is a batch of `EnrollItem`s (an image reference and the person it
shows). `enroll_batch` processes one batch and writes it in one database transaction,
and it is idempotent: an image already stored for that person is recognised by its
content hash before any model runs, and the store refuses duplicates of
(image sha256, model, face index). So an interrupted job is resumed by running it again,
and a Celery worker can take the very same batch (workers/ does exactly that).

Enrollment photos must show one face. A photo with no face or several faces is
reported, never guessed, unless the caller asks for the largest face.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Literal

from identity import names
from identity.archives import ArchiveReader
from identity.errors import InputError
from identity.faces.decode import read_bytes
from identity.faces.pipeline import FacePipeline
from identity.faces.types import ImageRef, ImageResult
from identity.files import is_image_path
from identity.store import Store
from identity.store.types import FacesToAdd, ModelInfo

Status = Literal[
    "enrolled", "already_present", "no_face", "multiple_faces", "unreadable", "conflict", "invalid",
    "not_an_image",
]
SKIPPED: frozenset[str] = frozenset(
    {"no_face", "multiple_faces", "unreadable", "conflict", "invalid", "not_an_image"})


@dataclass(frozen=True)
class EnrollItem:
    """One image of one person. `source` names the photo in outcomes and in the store: a
    path readable by whoever processes it, unless `path` says where the bytes are (an
    upload spooled for a worker, whose `source` is the client's file name, never the
    spool's path)."""

    source: str
    person: str  # external id
    display_name: str | None = None
    actor: str | None = None  # who asked (audit log of persons the batch creates); None: this process's user
    path: str | None = None  # where the bytes are, when not at `source` (identity/spool.py)
    member: str | None = None  # with `path` a zip archive: the entry to read (identity/archives.py)


@dataclass(frozen=True)
class ItemOutcome:
    source: str
    person: str
    status: Status
    reason: str | None = None
    face_id: int | None = None
    person_id: int | None = None  # the person enrolled to, beside its external id `person`


@dataclass
class EnrollSummary:
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    report: Path | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def skipped(self) -> int:
        return sum(n for status, n in self.counts.items() if status in SKIPPED)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            **{status: self.counts.get(status, 0) for status in Status.__args__},  # type: ignore[attr-defined]
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.total / self.seconds, 2) if self.seconds else None,
            "report": str(self.report) if self.report else None,
        }


# --- planning -----------------------------------------------------------------------------


def items_from_directory(root: str | Path) -> Iterator[EnrollItem | ItemOutcome]:
    """`root/<person>/**/<image>`: the folder name is the person's external id (the
    layout of LFW and torchvision's ImageFolder). Folders starting with `_` or `.` are not
    people (e.g. a `_query/` folder of probe photos) and are left out. Other files in a
    person's folder become `not_an_image` outcomes, so the report lists them (hidden
    files, such as `.DS_Store`, are not the user's photos and are passed over)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a directory", path=str(root))
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if person_dir.name.startswith(("_", ".")):
            continue
        for path in sorted(person_dir.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if is_image_path(path):
                yield EnrollItem(source=str(path), person=person_dir.name)
            else:
                yield ItemOutcome(str(path), person_dir.name, "not_an_image",
                                  f"not an image file (extension {path.suffix or 'none'})")


def items_from_manifest(path: str | Path) -> Iterator[EnrollItem | ItemOutcome]:
    """A CSV (header: path, person[, display_name]) or JSONL file (keys path, person,
    display_name). Relative paths are relative to the manifest's folder. A malformed
    line becomes an `invalid` outcome naming the line; the rest of the file still runs."""
    path = Path(path)
    base = path.parent
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read manifest: {exc.strerror or exc}", path=str(path)) from None
    with handle:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = _jsonl_rows(handle)
        else:
            rows = ((n, row) for n, row in enumerate(csv.DictReader(handle), start=2))
        for line, row in rows:
            if isinstance(row, str):  # a parse error message
                yield ItemOutcome(f"{path}:{line}", "", "invalid", row)
                continue
            image = (row.get("path") or "").strip()
            person = (row.get("person") or row.get("external_id") or "").strip()
            if not image or not person:
                yield ItemOutcome(f"{path}:{line}", person, "invalid", "needs 'path' and 'person'")
                continue
            source = Path(image) if Path(image).is_absolute() else base / image
            name = (row.get("display_name") or "").strip() or None
            yield EnrollItem(source=str(source), person=person, display_name=name)


def _jsonl_rows(handle) -> Iterator[tuple[int, dict | str]]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, f"not JSON: {exc.msg}"
            continue
        yield line, row if isinstance(row, dict) else "not a JSON object"


# --- one batch ------------------------------------------------------------------------------


def enroll_batch(
    items: list[EnrollItem],
    *,
    pipeline: FacePipeline,
    store: Store,
    max_bytes: int,
    largest_face: bool = False,
    job_id: str | None = None,
) -> list[ItemOutcome]:
    """Process and store one batch in one transaction. Outcomes in input order. With
    `job_id`, the transaction writes only while that job is active (`JobEndedError`).
    A file larger than `max_bytes` (the API's upload limit) is refused unread."""
    return next(enroll_stream([items], pipeline=pipeline, store=store, max_bytes=max_bytes,
                              largest_face=largest_face, job_id=job_id))


def enroll_stream(
    batches: Iterable[list[EnrollItem]],
    *,
    pipeline: FacePipeline,
    store: Store,
    max_bytes: int,
    largest_face: bool = False,
    job_id: str | None = None,
) -> Iterator[list[ItemOutcome]]:
    """Enroll batch after batch through ONE pipeline stream, so detection of the next
    batches overlaps the embedding of this one; each batch is still written in its own
    transaction and yields its outcomes (input order) once committed."""
    model = ModelInfo(pipeline.model_name, pipeline.model_version, pipeline.dim)
    planned: list[_Planned] = []  # batches whose images are in the pipeline, oldest first

    def refs() -> Iterator[ImageRef]:
        for batch in batches:
            plan = _plan(batch, store, model.name, max_bytes=max_bytes)
            planned.append(plan)
            yield from plan.refs

    def committed() -> Iterator[list[ItemOutcome]]:
        # Oldest first, so outcomes come back in input order.
        while planned and len(planned[0].results) == len(planned[0].refs):
            yield _store(planned.pop(0), store, model, largest_face, job_id)

    # refs() plans a batch before yielding its first ref, so every result's batch is planned.
    # Chips are cut while the decoded photo is at hand: afterwards only a backfill from
    # the source file could make them.
    for result in pipeline.process(refs(), keep_chips=pipeline.keep_chips):
        next(p for p in planned if len(p.results) < len(p.refs)).results.append(result)
        yield from committed()
    yield from committed()


@dataclass
class _Planned:
    items: list[EnrollItem]
    outcomes: dict[int, ItemOutcome]  # decided without the model (unreadable, already present)
    todo: list[int]  # item positions that go through the pipeline
    refs: list[ImageRef]
    results: list[ImageResult] = field(default_factory=list)


def _plan(items: list[EnrollItem], store: Store, model: str, *, max_bytes: int) -> _Planned:
    """Read and hash the batch's files; images already enrolled to the same person skip the
    model (a re-run or a resume costs a hash per file, not a forward pass). A person's
    external id is checked (and NFC-normalised) here, before anything is read: every way
    in (folders, manifests, archives, uploads) meets the same rule (identity/names.py)."""
    outcomes: dict[int, ItemOutcome] = {}
    loaded: dict[int, tuple[bytes, str]] = {}
    items = list(items)
    archives: dict[str, ArchiveReader] = {}  # opened once per batch, not once per entry
    try:
        for i, item in enumerate(items):
            try:
                items[i] = item = replace(item, person=names.external_id(item.person),
                                          display_name=names.display_name(item.display_name))
            except InputError as exc:
                outcomes[i] = ItemOutcome(item.source, item.person, "invalid", exc.message)
                continue
            try:
                data = _read(item, archives, max_bytes)
            except InputError as exc:
                outcomes[i] = ItemOutcome(item.source, item.person, "unreadable", exc.message)
                continue
            loaded[i] = (data, hashlib.sha256(data).hexdigest())
    finally:
        for reader in archives.values():
            reader.close()
    known = store.known_images([sha for _, sha in loaded.values()], model=model)
    todo = []
    for i, (data, sha) in loaded.items():
        image = known.get(sha)
        if image and image.faces and all(f.person_external_id == items[i].person for f in image.faces):
            outcomes[i] = ItemOutcome(items[i].source, items[i].person, "already_present",
                                      face_id=image.faces[0].face_id, person_id=image.faces[0].person_id)
        else:
            todo.append(i)
    refs = [ImageRef(source=items[i].source, data=loaded[i][0]) for i in todo]
    return _Planned(items, outcomes, todo, refs)


def _read(item: EnrollItem, archives: dict[str, ArchiveReader], max_bytes: int) -> bytes:
    if item.member is None:
        return read_bytes(item.path or item.source)
    if item.path not in archives:
        archives[item.path] = ArchiveReader(item.path)  # type: ignore[index]
    return archives[item.path].read(item.member, name=item.source, max_bytes=max_bytes)  # type: ignore[index]


def _store(plan: _Planned, store: Store, model: ModelInfo, largest_face: bool,
           job_id: str | None = None) -> list[ItemOutcome]:
    outcomes = dict(plan.outcomes)
    to_add: list[tuple[int, FacesToAdd]] = []
    for i, result in zip(plan.todo, plan.results):
        outcome, add = _choose_face(plan.items[i], result, largest_face)
        if outcome is not None:
            outcomes[i] = outcome
        else:
            to_add.append((i, add))  # type: ignore[arg-type]
    if to_add:
        stored = store.add_faces([add for _, add in to_add], model=model, job_id=job_id)
        for (i, _), result in zip(to_add, stored):
            status: Status = "enrolled" if result.status == "added" else result.status  # type: ignore[assignment]
            face_id = result.face_ids[0] if result.face_ids else None
            outcomes[i] = ItemOutcome(plan.items[i].source, plan.items[i].person, status, result.detail, face_id,
                                      result.person_id)
    return [outcomes[i] for i in range(len(plan.items))]


def _choose_face(
    item: EnrollItem, result: ImageResult, largest_face: bool
) -> tuple[ItemOutcome | None, FacesToAdd | None]:
    if result.error is not None:
        message = getattr(result.error, "message", str(result.error))
        return ItemOutcome(item.source, item.person, "unreadable", message), None
    if not result.faces:
        return ItemOutcome(item.source, item.person, "no_face", "no face found"), None
    if len(result.faces) > 1 and not largest_face:
        reason = f"{len(result.faces)} faces found; pass --largest-face to enroll the largest"
        return ItemOutcome(item.source, item.person, "multiple_faces", reason), None
    index = max(range(len(result.faces)), key=lambda j: result.faces[j].area)
    add = FacesToAdd(image=result, external_id=item.person, display_name=item.display_name,
                     face_indexes=(index,), actor=item.actor)
    return None, add


# --- the job ---------------------------------------------------------------------------------


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


Runner = Callable[[Iterable[list[EnrollItem]], Callable[[list[ItemOutcome]], None]], None]


def run(
    items: Iterable[EnrollItem | ItemOutcome],
    *,
    runner: Runner,
    batch_size: int,
    report: Path | None = None,
    on_progress: Callable[[list[ItemOutcome]], None] | None = None,
) -> EnrollSummary:
    """Cut `items` into batches and hand them to `runner` (in-process, or the Celery
    dispatcher that keeps many batches in flight), counting outcomes and appending every
    non-enrolled one to `report` (CSV) as it arrives, so an interrupted job still leaves
    its report behind."""
    summary = EnrollSummary(report=report)
    start = time.perf_counter()
    handle = None
    writer = None
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        handle = report.open("w", newline="", encoding="utf-8")
        writer = csv.writer(handle)
        writer.writerow(["source", "person", "status", "reason"])

    def done(outcomes: list[ItemOutcome]) -> None:
        summary.counts.update(o.status for o in outcomes)
        if writer is not None:
            for o in outcomes:
                if o.status != "enrolled":
                    writer.writerow([o.source, o.person, o.status, o.reason or ""])
            handle.flush()  # type: ignore[union-attr]
        if on_progress is not None:
            on_progress(outcomes)

    def batches() -> Iterator[list[EnrollItem]]:
        pending: list[EnrollItem] = []
        for item in items:
            if isinstance(item, ItemOutcome):  # decided while planning (a bad manifest line)
                done([item])
            else:
                pending.append(item)
                if len(pending) >= batch_size:
                    yield pending
                    pending = []
        if pending:
            yield pending

    try:
        runner(batches(), done)
    finally:
        summary.seconds = time.perf_counter() - start
        if handle is not None:
            handle.close()
    return summary
