"""Text classification data as class folders (issue 26, part 2): one folder per label, one text file per
example, as IMDB's `aclImdb/`, 20 Newsgroups' `20news-bydate-*/`, BBC News' `bbc/`, scikit-learn's `load_files`
and Keras' `text_dataset_from_directory` have it. Labels come from folder names, splits from `train` / `test`
folders; unlabelled folders and files that are not examples are left out and said, never read as a class."""

from __future__ import annotations

import tarfile

import pandas as pd
import pytest

import helpers as hp
from helpers import _readers as readers
from helpers import data as hd

_PRAISE = ["A moving story with a superb cast.", "The score is lovely<br /><br />and the ending earned.",
           "I laughed, I cried, I would watch it again."]
_PANS = ["A dull, plodding mess.", "The plot made no sense<br /><br />and the acting was wooden.",
         "Two hours I will never get back."]


def _review(split: str, label: str, i: int) -> str:
    pool = _PRAISE if label == "pos" else _PANS
    return f"Review {i} of the {split} set. " + " ".join(pool[(i + k) % 3] for k in range(4))


def _acl_imdb(root, n: int = 30, unsup: int = 40):
    """aclImdb as the tarball unpacks: train/{pos,neg,unsup}, test/{pos,neg}, the bag-of-words and URL files
    beside the class folders, README, imdb.vocab and imdbEr.txt beside the split folders."""
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(_review(split, label, i))
        (root / split / "labeledBow.feat").write_text("0:9 1:1 2:4\n")
        for label in ("pos", "neg"):
            (root / split / f"urls_{label}.txt").write_text("http://www.imdb.com/title/tt0453418/usercomments\n")
    (root / "train" / "unsup").mkdir()
    for i in range(unsup):
        (root / "train" / "unsup" / f"{i}_0.txt").write_text(f"An unrated review number {i}.")
    (root / "train" / "unsupBow.feat").write_text("0:1\n")
    (root / "README").write_text("Large Movie Review Dataset v1.0\n")
    (root / "imdb.vocab").write_text("the\nand\na\n")
    (root / "imdbEr.txt").write_text("0.0490972013402\n")
    return root


def test_acl_imdb_reads_one_labelled_table_per_split_and_says_what_it_left_out(tmp_path, capsys):
    root = _acl_imdb(tmp_path / "aclImdb")
    loaded = hd.load_labeled_data(root, text_col="title+content", label_col="label", label_names=None,
                                  columns=["label", "title", "content"])  # notebook 02's own arguments
    out = capsys.readouterr().out
    assert "single" not in out and "configurations" not in out
    assert "aclImdb: left out 3 entries beside the split folders (README, imdb.vocab, imdbEr.txt)" in out
    assert ("aclImdb/train holds class folders: 60 text files in 2 classes (neg 30, pos 30) read as its train table"
            in out)
    assert "unsup/ (40 files, no label)" in out and "4 files beside the class folders (labeledBow.feat" in out
    assert "TEXT_COL='title+content', LABEL_COL='label' do not apply" in out
    assert loaded.label_names == ["neg", "pos"] and len(loaded.dataset) == 60
    assert loaded.report.rows_read == 120 and loaded.report.parts == {"train": (60, 60), "test": (60, 60)}
    assert loaded.dataset[0]["text"].startswith("Review 0 of the train set.")
    splits = hd.stratified_split(loaded.dataset, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 54, "validation": 6, "test": 60}
    assert all(t.startswith("Review") and "of the test set" in t for t in splits["test"]["text"])
    said = capsys.readouterr().out
    assert "using the data's own splits" in said and "test 60 rows (aclImdb/test)" in said
    assert "validation: 10% of the train split held out" in said


def test_recipe_names_do_not_refuse_folder_names(tmp_path, capsys):
    """Notebook 02's default LABEL_NAMES (negative,positive) names integer labels; pos / neg folders win."""
    root = _acl_imdb(tmp_path / "aclImdb", n=12, unsup=0)
    loaded = hd.load_labeled_data(root, label_names="negative,positive", label_names_default=True)
    assert loaded.label_names == ["neg", "pos"]
    assert "recipe's default (negative,positive)" in loaded.label_rule
    with pytest.raises(hd.DataError, match=r"found \{neg, pos\}, LABEL_NAMES has \{negative, positive\}"):
        hd.load_labeled_data(root, label_names="negative,positive", label_names_default=False)
    assert hd.load_labeled_data(root, label_names="neg,pos").label_names == ["neg", "pos"]


def test_20_newsgroups_files_without_suffix_in_latin_1(tmp_path, capsys):
    root = tmp_path / "20news-bydate"
    groups = ["comp.graphics", "rec.autos", "sci.space"]
    for split, n in (("train", 12), ("test", 5)):
        for group in groups:
            folder = root / f"20news-bydate-{split}" / group
            folder.mkdir(parents=True)
            for i in range(n):
                body = f"From: m\xfcller@uni-k\xf6ln.de\nSubject: Re: {group} {i}\n\nHas anyone seen thread {i}?\n"
                (folder / str(38000 + i)).write_bytes(body.encode("latin-1"))
    loaded = hd.load_labeled_data(root, text_col="sentence", label_col="label", columns=["label", "sentence"])
    assert loaded.label_names == groups and len(loaded.dataset) == 36
    assert loaded.dataset[0]["text"].startswith("From: müller@uni-köln.de")
    assert len(loaded.given.splits["test"]) == 15
    direct = hd.load_labeled_data(root / "20news-bydate-test")  # the class folders of one split: one table
    assert len(direct.dataset) == 15 and "read as one table" in capsys.readouterr().out


def test_bbc_news_one_table_with_every_odd_file_reported(tmp_path, capsys):
    root = tmp_path / "bbc"
    for topic in ("business", "sport", "tech"):
        (root / topic).mkdir(parents=True)
        for i in range(1, 13):
            (root / topic / f"{i:03}.txt").write_bytes(
                f"{topic.title()} story {i}\n\nThe deal was worth \xa3{i}m, officials said.\n".encode("latin-1"))
    (root / "README.TXT").write_text("Consists of 2225 documents from the BBC news website.\n")
    (root / "sport" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "tech" / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "tech" / "013.txt").write_text("")
    (root / "tech" / "014.txt").write_text("\u200b\u200b\ufeff")
    (root / "business" / "013.txt").write_bytes("Shares in Café Ltd rose.\r\n".encode("utf-16"))
    (root / "business" / "014.txt").write_bytes(b"\x00\x01\x02binary\x00")
    loaded = hd.load_labeled_data(root)
    out = capsys.readouterr().out
    assert ("bbc holds class folders: 39 text files in 3 classes (business 13, sport 12, tech 14) read as one table"
            in out)
    assert "3 files not text in the class folders" in out and "binary files named like text 1" in out
    assert "1 file beside the class folders (README.TXT)" in out
    assert loaded.report.rows_read == 39 and len(loaded.dataset) == 37
    assert loaded.report.dropped == {"empty text": 1,
                                     "no visible characters (only zero-width, control or format ones)": 1}
    assert "Shares in Café Ltd rose." in [t.strip() for t in loaded.dataset["text"]]
    assert any("£3m" in t for t in loaded.dataset["text"])
    hd.stratified_split(loaded.dataset, seed=0)
    assert "re-splitting bbc 80/10/10 (seeded, stratified): it has no validation or test split" in (
        capsys.readouterr().out)


def test_an_archive_with_wrapper_folders_keeps_its_splits(tmp_path):
    _acl_imdb(tmp_path / "src" / "aclImdb", n=15, unsup=5)
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "aclImdb", arcname="aclImdb")
    loaded = hd.load_labeled_data(archive)
    assert loaded.source.kind == "archive" and len(loaded.dataset) == 30 and len(loaded.given.splits["test"]) == 30
    assert len(hd.load_labeled_data(archive, hub_split="test").dataset) == 30


def test_what_is_not_class_folders_is_left_to_the_other_readers(tmp_path):
    one = tmp_path / "one_class"
    (one / "pos").mkdir(parents=True)
    (one / "pos" / "1.txt").write_text("Fine.")
    assert readers.class_folder_splits(one) is None
    configs = tmp_path / "configs"  # tables named after splits in two folders: configurations, not classes
    for name in ("amazon", "yelp"):
        (configs / name).mkdir(parents=True)
        (configs / name / "train.txt").write_text("__label__1 bad\n__label__2 good\n")
    assert readers.class_folder_splits(configs) is None
    with pytest.raises(hd.DataError, match="same split in 2 folders"):
        hd.load_labeled_data(configs)


def test_splits_that_cannot_be_used_say_why(tmp_path):
    root = _acl_imdb(tmp_path / "aclImdb", n=10, unsup=0)
    with pytest.raises(hd.DataError, match=r"class folders for the splits train, test, not 'validation'"):
        hd.load_labeled_data(root, hub_split="validation")
    (root / "test" / "unrated").mkdir()
    (root / "test" / "unrated" / "1_5.txt").write_text("A film I have opinions about.")
    with pytest.raises(hd.DataError, match=r"test split of aclImdb has labels the train split has not \(unrated\)"):
        hd.load_labeled_data(root)


def test_predict_reads_class_folders_and_scores_against_their_names(tmp_path, capsys, tiny_encoder_dir):
    """`workbook predict DIR --input folder --label-col label`: one row per file, its folder the truth."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from workbook import cli

    model_dir = hp.artifacts._save_model(tmp_path / "model",
                                         AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
                                         AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
                                         info={"max_length": 32})
    root = tmp_path / "reviews"
    for label, text in (("negative", "Sales fell {}."), ("neutral", "Talks go on {}."), ("positive", "Profit up {}.")):
        (root / label).mkdir(parents=True)
        for i in range(4):
            (root / label / f"{i}.txt").write_text(text.format(i))
    (root / "unsup").mkdir()
    (root / "unsup" / "0.txt").write_text("No label here.")
    out = tmp_path / "scored.csv"
    assert cli.main(["predict", str(model_dir), "--input", str(root), "--output", str(out), "--label-col",
                     "label"]) == 0
    err = capsys.readouterr().err
    scored = pd.read_csv(out)
    assert len(scored) == 12 and list(scored.columns[:3]) == ["text", "label", "file"]
    assert scored["file"].tolist()[:2] == ["negative/0.txt", "negative/1.txt"]
    assert "unsup/ (1 file, no label)" in err and "accuracy" in err
