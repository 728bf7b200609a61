"""LFW pair lists: the standard 10-fold `pairs.txt` and the single-list View 1 files.

Both formats name images as `Name i` and resolve to `<dir>/<Name>/<Name>_<i:04d>.jpg`.

* 10-fold (`pairs.txt`): first line `10<TAB>300`, then per fold 300 same-person lines
  `Name i j` followed by 300 different-person lines `NameA i NameB j`. The fold of a
  pair is the block it sits in, which is exactly what facenet's
  `KFold(n_splits=10, shuffle=False)` over the file order yields.
* Single list (`pairsDevTrain.txt`, `pairsDevTest.txt`): first line `1100`, then 1100
  same-person lines and 1100 different-person lines. Here facenet's `KFold` over the
  file order would put only same pairs in folds 0-4 and only different pairs in 5-9,
  so a test fold could hold no impostor at all (FAR undefined) and the threshold would
  be trained on a mix unlike the test fold. We therefore split each half with
  `KFold(10, shuffle=False)` separately: fold k gets the k-th tenth of the same pairs
  and the k-th tenth of the different pairs, the structure `pairs.txt` has by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from identity.errors import InputError

DEFAULT_FOLDS = 10


@dataclass(frozen=True)
class Pair:
    """Two images, whether they show the same person, and the CV fold the pair belongs to."""

    path1: Path
    path2: Path
    same: bool
    fold: int
    name1: str
    name2: str


@dataclass(frozen=True)
class PairList:
    """The parsed pairs of one file, in file order."""

    pairs: tuple[Pair, ...]
    n_folds: int
    source: str

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((p.same for p in self.pairs), dtype=bool, count=len(self.pairs))

    @property
    def folds(self) -> np.ndarray:
        return np.fromiter((p.fold for p in self.pairs), dtype=np.int64, count=len(self.pairs))

    def unique_paths(self) -> list[Path]:
        """Every image referenced, once, in order of first appearance (stable for caching)."""
        seen: dict[Path, None] = {}
        for p in self.pairs:
            seen.setdefault(p.path1)
            seen.setdefault(p.path2)
        return list(seen)

    def missing_paths(self) -> list[Path]:
        return [p for p in self.unique_paths() if not p.is_file()]

    def subset(self, per_fold_half: int) -> PairList:
        """The first `per_fold_half` same and different pairs of every fold (for quick runs).

        Taking from every fold keeps cross-validation possible on the subset.
        """
        kept: list[Pair] = []
        for fold in range(self.n_folds):
            for same in (True, False):
                kept += [p for p in self.pairs if p.fold == fold and p.same == same][:per_fold_half]
        return PairList(tuple(kept), self.n_folds, self.source)


def image_path(root: Path, name: str, index: int) -> Path:
    return root / name / f"{name}_{index:04d}.jpg"


def kfold_ids(n: int, n_folds: int) -> np.ndarray:
    """Fold id per position, as sklearn's `KFold(n_folds, shuffle=False)` assigns test sets.

    The first `n % n_folds` folds get one extra item.
    """
    if not 0 < n_folds <= n:
        raise InputError(f"{n} pairs cannot be split into {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read pairs file: {exc}", path=str(path)) from exc
    numbered = [(i + 1, line.split()) for i, line in enumerate(text.splitlines())]
    return [(n, fields) for n, fields in numbered if fields]


def _int(field: str, path: Path, line_no: int, what: str) -> int:
    try:
        value = int(field)
    except ValueError:
        raise InputError(
            f"line {line_no}: {what} {field!r} is not an integer", path=str(path)
        ) from None
    if value < 0 or (what == "image number" and value < 1):
        raise InputError(f"line {line_no}: {what} {value} is out of range", path=str(path))
    return value


def _parse_pair(
    fields: list[str], root: Path, path: Path, line_no: int, same: bool, fold: int
) -> Pair:
    expected = 3 if same else 4
    kind = "same-person `Name i j`" if same else "different-person `NameA i NameB j`"
    if len(fields) != expected:
        raise InputError(
            f"line {line_no}: expected a {kind} line ({expected} fields), got {len(fields)}: "
            f"{' '.join(fields)!r}",
            path=str(path),
        )
    if same:
        name1 = name2 = fields[0]
        i, j = (
            _int(fields[1], path, line_no, "image number"),
            _int(fields[2], path, line_no, "image number"),
        )
    else:
        name1, name2 = fields[0], fields[2]
        i, j = (
            _int(fields[1], path, line_no, "image number"),
            _int(fields[3], path, line_no, "image number"),
        )
    return Pair(image_path(root, name1, i), image_path(root, name2, j), same, fold, name1, name2)


def parse_pairs(pairs_file: Path | str, image_dir: Path | str) -> PairList:
    """Parse either LFW pair format (recognised by its header line).

    Raises InputError naming the file and line on a malformed header or pair line, or
    when the number of lines disagrees with the header.
    """
    path, root = Path(pairs_file), Path(image_dir)
    lines = _read_lines(path)
    if not lines:
        raise InputError("pairs file is empty", path=str(path))
    header_no, header = lines[0]
    body = lines[1:]
    if len(header) == 2:
        n_folds = _int(header[0], path, header_no, "number of folds")
        per_half = _int(header[1], path, header_no, "pairs per fold half")
        if n_folds < 2 or per_half < 1:
            raise InputError(
                f"line {header_no}: header needs ≥ 2 folds and ≥ 1 pair", path=str(path)
            )
        _check_count(body, 2 * n_folds * per_half, path)
        pairs = [
            _parse_pair(
                fields,
                root,
                path,
                no,
                same=(k % (2 * per_half)) < per_half,
                fold=k // (2 * per_half),
            )
            for k, (no, fields) in enumerate(body)
        ]
        return PairList(tuple(pairs), n_folds, str(path))
    if len(header) == 1:
        per_half = _int(header[0], path, header_no, "pairs per half")
        if per_half < 1:
            raise InputError(f"line {header_no}: header needs ≥ 1 pair", path=str(path))
        _check_count(body, 2 * per_half, path)
        n_folds = max(1, min(DEFAULT_FOLDS, per_half))  # tiny files: one pair per fold
        folds = kfold_ids(per_half, n_folds)
        pairs = [
            _parse_pair(fields, root, path, no, same=k < per_half, fold=int(folds[k % per_half]))
            for k, (no, fields) in enumerate(body)
        ]
        return PairList(tuple(pairs), n_folds, str(path))
    raise InputError(
        f"line {header_no}: header must be `<folds> <pairs per fold half>` (pairs.txt) or "
        f"`<pairs per half>` (View 1), got {' '.join(header)!r}",
        path=str(path),
    )


def _check_count(body: list[tuple[int, list[str]]], expected: int, path: Path) -> None:
    if len(body) != expected:
        raise InputError(
            f"header announces {expected} pair lines, file has {len(body)}", path=str(path)
        )
