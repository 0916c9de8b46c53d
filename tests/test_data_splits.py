"""A folder's own splits (issue 26, part 3): `dev` / `valid` / `val` / `validation` files are its validation
split, a test file without labels (GLUE's `test.tsv`: `index<TAB>sentence`) is not used for metrics and the run
says so and what it used instead; data that is re-split anyway says which split it re-splits."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

from helpers import data as hd

_GOOD = ["a gorgeous , witty , seductive movie .", "the performances are uniformly excellent .",
         "it 's a charming and often affecting journey ."]
_BAD = ["the plot is nothing but boilerplate cliches .", "a sour little movie .", "unfunny and lifeless ."]


def _sentences(n: int, tag: str) -> list[tuple[str, int]]:
    return [(f"{(_GOOD if i % 2 else _BAD)[i % 3]} ({tag} {i})", i % 2) for i in range(n)]


def _glue_sst2(root, train: int = 200, dev: int = 40, test: int = 50):
    """GLUE's SST-2 as downloaded: train.tsv and dev.tsv (`sentence<TAB>label`), test.tsv without labels
    (`index<TAB>sentence`), and the original treebank files in original/."""
    (root / "original").mkdir(parents=True)
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in _sentences(train, "tr")))
    (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in _sentences(dev, "dev")))
    (root / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, (s, _) in
                                                                enumerate(_sentences(test, "te"))))
    (root / "original" / "datasetSentences.txt").write_text("sentence_index\tsentence\n1\tThe Rock is destined\n")
    return root


def test_glue_dev_is_the_validation_split_and_the_unlabelled_test_is_said(tmp_path, capsys):
    root = _glue_sst2(tmp_path / "SST-2")
    loaded = hd.load_labeled_data(root, text_col="sentence", label_col="label", label_names="negative,positive")
    out = capsys.readouterr().out
    assert "reading 1 file as its validation table: dev.tsv" in out
    assert ("test.tsv has no 'label' column: it is not used for metrics (unlabelled); the test split is held out "
            "of train.tsv instead") in out
    assert len(loaded.dataset) == 200 and len(loaded.given.splits["validation"]) == 40
    assert set(loaded.given.splits["validation"]["label"]) == {"negative", "positive"}
    assert loaded.report.parts == {"train": (200, 200), "validation": (40, 40)}
    splits = hd.stratified_split(loaded.dataset, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 180, "validation": 40, "test": 20}
    assert all("(dev " in t for t in splits["validation"]["text"])
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])
    said = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(said) == 1 and "validation 40 rows (dev.tsv)" in said[0]
    assert "test: 10% of the train split held out (20 rows" in said[0] and "test.tsv has no 'label' column" in said[0]
    assert hd.stratified_split(loaded, seed=0)["validation"]["text"] == splits["validation"]["text"]


@pytest.mark.parametrize("name", ["valid.csv", "val.csv", "validation.csv", "dev.csv"])
def test_every_name_of_a_validation_file(tmp_path, name):
    frame = pd.DataFrame(_sentences(60, "tr"), columns=["sentence", "label"])
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.head(12).assign(sentence=lambda f: f.sentence + " again").to_csv(tmp_path / name, index=False)
    frame.tail(10).assign(sentence=lambda f: f.sentence + " held").to_csv(tmp_path / "test.csv", index=False)
    loaded = hd.load_labeled_data(tmp_path, text_col="sentence")
    splits = hd.stratified_split(loaded.dataset)
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "validation": 12, "test": 10}


def test_the_original_amazon_csv_folder_keeps_its_test_file(tmp_path, capsys):
    root = tmp_path / "amazon_review_polarity_csv"
    root.mkdir()
    for split, n in (("train", 80), ("test", 20)):
        pd.DataFrame([(y + 1, f"Title {split} {i}", s) for i, (s, y) in enumerate(_sentences(n, split))]).to_csv(
            root / f"{split}.csv", header=False, index=False)
    (root / "readme.txt").write_text("The Amazon reviews polarity dataset is constructed by ...\n")
    loaded = hd.load_labeled_data(root, text_col="title+content", label_col="label",
                                  columns=["label", "title", "content"], label_names="negative,positive")
    splits = hd.stratified_split(loaded.dataset)
    assert {k: len(v) for k, v in splits.items()} == {"train": 72, "validation": 8, "test": 20}
    assert "validation: 10% of the train split held out (8 rows, seeded, stratified; no validation split given)" in (
        capsys.readouterr().out)


def test_hub_test_splits_with_minus_one_labels_are_unlabelled(tmp_path, capsys):
    """`hf download nyu-mll/glue --include sst2/*`: test parquet whose labels are all -1."""
    rows = _sentences(100, "tr")
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"sentence": [s for s, _ in rows], "label": [y for _, y in rows]}),
        validation=datasets.Dataset.from_dict({"sentence": [f"{s} v" for s, _ in rows[:20]],
                                               "label": [y for _, y in rows[:20]]}),
        test=datasets.Dataset.from_dict({"sentence": [f"{s} t" for s, _ in rows[:30]], "label": [-1] * 30}))
    for split, part in dd.items():
        (tmp_path / "sst2").mkdir(exist_ok=True)
        part.to_parquet(tmp_path / "sst2" / f"{split}-00000-of-00001.parquet")
    loaded = hd.load_labeled_data(tmp_path / "sst2", text_col="sentence", label_names="negative,positive")
    assert "has no labels (every 'label' is empty or -1)" in capsys.readouterr().out
    splits = hd.stratified_split(loaded)
    assert {k: len(v) for k, v in splits.items()} == {"train": 90, "validation": 20, "test": 10}


def test_a_folder_with_only_a_train_file_says_it_is_re_split(tmp_path, capsys):
    pd.DataFrame(_sentences(50, "tr"), columns=["sentence", "label"]).to_csv(tmp_path / "train.csv", index=False)
    loaded = hd.load_labeled_data(tmp_path, text_col="sentence")
    hd.stratified_split(loaded.dataset)
    assert "re-splitting train.csv 80/10/10 (seeded, stratified): it has no validation or test split" in (
        capsys.readouterr().out)
    test_only = hd.load_labeled_data(tmp_path / "train.csv", text_col="sentence")  # one file: as before, quietly
    capsys.readouterr()
    assert len(hd.stratified_split(test_only.dataset)["test"]) == 5 and capsys.readouterr().out == ""


def test_asking_for_one_split_reads_that_split_only(tmp_path):
    root = _glue_sst2(tmp_path / "SST-2")
    dev = hd.load_labeled_data(root, text_col="sentence", label_names="negative,positive", hub_split="validation")
    assert len(dev.dataset) == 40 and dev.given is not None and not dev.given.splits
    full = hd.load_labeled_data(root, text_col="sentence", label_names="negative,positive")
    subset = full.dataset.select(range(150))  # a subset is re-split: the given splits belong to the whole
    assert hd.stratified_split(full.dataset)["validation"].num_rows == 40
    assert hd.stratified_split(subset)["validation"].num_rows == 15
