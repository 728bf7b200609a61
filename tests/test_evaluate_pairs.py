"""LFW pair files: both formats parse into image paths, labels and CV folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import KFold

from identity.errors import InputError
from identity.evaluate.pairs import kfold_ids, parse_pairs

LFW_DEV = Path("/work/shared/data/lfw-dev")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    return path


def test_ten_fold_format_takes_folds_from_the_blocks(tmp_path: Path) -> None:
    lines = ["2\t2"]
    for fold in range(2):
        lines += [f"Ann\t{fold + 1}\t{fold + 2}", f"Bob\t1\t{fold + 3}"]
        lines += [f"Ann\t1\tBob\t{fold + 1}", "Cid\t12\tDee\t3"]
    pairs = parse_pairs(write(tmp_path, "\n".join(lines) + "\n"), tmp_path)

    assert len(pairs) == 8 and pairs.n_folds == 2
    assert pairs.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.labels.tolist() == [True, True, False, False] * 2
    first, diff = pairs.pairs[0], pairs.pairs[3]
    assert first.path1 == tmp_path / "Ann" / "Ann_0001.jpg"
    assert first.path2 == tmp_path / "Ann" / "Ann_0002.jpg"
    assert (diff.path1, diff.path2) == (
        tmp_path / "Cid" / "Cid_0012.jpg",
        tmp_path / "Dee" / "Dee_0003.jpg",
    )
    assert (diff.name1, diff.name2) == ("Cid", "Dee")


def test_single_list_folds_split_each_half_like_kfold(tmp_path: Path) -> None:
    same = [f"P{i}\t1\t2" for i in range(23)]
    diff = [f"P{i}\t1\tQ{i}\t1" for i in range(23)]
    pairs = parse_pairs(write(tmp_path, "\n".join(["23", *same, *diff])), tmp_path)

    expected = np.zeros(23, int)
    for fold, (_, test) in enumerate(KFold(n_splits=10, shuffle=False).split(np.arange(23))):
        expected[test] = fold
    assert pairs.folds[:23].tolist() == expected.tolist()
    assert pairs.folds[23:].tolist() == expected.tolist()
    # every fold holds both kinds of pair, so FAR and accuracy are defined on each
    for fold in range(10):
        in_fold = pairs.labels[pairs.folds == fold]
        assert in_fold.any() and not in_fold.all()


def test_kfold_ids_matches_sklearn() -> None:
    for n in (10, 11, 19, 1100):
        expected = np.concatenate(
            [np.full(len(test), k) for k, (_, test) in enumerate(KFold(10).split(np.arange(n)))]
        )
        assert kfold_ids(n, 10).tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "2\nAnn\t1\t2\nAnn\t1\t3\nAnn\t1\tBob\nBob\t1\tCid\t2\n",
            "line 4: expected a different-person",
        ),
        ("1\nAnn\tone\t2\nAnn\t1\tBob\t1\n", "line 2: image number 'one' is not an integer"),
        ("1\nAnn\t0\t2\nAnn\t1\tBob\t1\n", "line 2: image number 0 is out of range"),
        ("1\nAnn\t1\tBob\t2\nAnn\t1\tBob\t1\n", "line 2: expected a same-person"),
        ("2\nAnn\t1\t2\nAnn\t1\tBob\t1\n", "header announces 4 pair lines, file has 2"),
        ("10 300 7\n", "line 1: header must be"),
        ("", "pairs file is empty"),
    ],
)
def test_malformed_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message) as err:
        parse_pairs(path, tmp_path)
    assert err.value.path == str(path)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read pairs file"):
        parse_pairs(tmp_path / "nope.txt", tmp_path)


def test_real_view1_dev_train_file() -> None:
    pairs = parse_pairs(LFW_DEV / "pairsDevTrain.txt", LFW_DEV)

    assert len(pairs) == 2200
    assert int(pairs.labels.sum()) == 1100
    assert np.bincount(pairs.folds).tolist() == [220] * 10
    assert len(pairs.unique_paths()) == 3443
    assert pairs.missing_paths() == []
    assert all(p.name1 == p.name2 for p in pairs.pairs if p.same)
    assert all(p.name1 != p.name2 for p in pairs.pairs if not p.same)


def test_subset_keeps_every_fold_balanced() -> None:
    small = parse_pairs(LFW_DEV / "pairsDevTrain.txt", LFW_DEV).subset(3)
    assert len(small) == 60
    for fold in range(10):
        assert small.labels[small.folds == fold].tolist().count(True) == 3
        assert small.labels[small.folds == fold].tolist().count(False) == 3
