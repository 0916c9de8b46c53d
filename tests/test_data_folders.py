"""Data folders as users have them: a Hub dataset downloaded with `hf download` (sharded parquet per split),
`save_to_disk` folders, Spark / pandas `part-*.parquet` folders, folders of split files."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

from helpers import _readers
from helpers import data as hd


def _reviews(n: int, start: int = 0) -> pd.DataFrame:
    """amazon_polarity's Hub columns: label (0 negative, 1 positive), title, content."""
    rows = []
    for i in range(start, start + n):
        good = i % 2 == 0
        verdict = "boils fast and looks nice" if good else "leaked on day two"
        rows.append({"label": int(good), "title": f"{'Great' if good else 'Awful'} kettle {i}",
                     "content": f"The kettle number {i} {verdict}."})
    return pd.DataFrame(rows)


def _hub_download(root):
    """The layout of `hf download fancyzhx/amazon_polarity --repo-type dataset --local-dir root`."""
    (root / "plain_text").mkdir(parents=True)
    _reviews(30, 0).to_parquet(root / "plain_text" / "train-00000-of-00002.parquet")
    _reviews(30, 30).to_parquet(root / "plain_text" / "train-00001-of-00002.parquet")
    _reviews(20, 100).to_parquet(root / "plain_text" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text("---\ndataset_info: ...\n---\n")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "download.lock.parquet").write_text("")
    return root


def test_a_downloaded_hub_dataset_reads_every_shard_of_the_split(tmp_path, capsys):
    root = _hub_download(tmp_path / "amazon_polarity")
    loaded = hd.load_labeled_data(root, text_col="title+content", label_col="label",
                                  label_names="negative,positive")
    assert len(loaded.dataset) == 60 and loaded.source.kind == "folder"
    assert set(loaded.dataset["label"]) == {"negative", "positive"}
    assert "reading 2 files as its train table: plain_text/train-00000-of-00002.parquet" in capsys.readouterr().out
    test = hd.load_labeled_data(root, text_col="title+content", label_col="label", label_names="negative,positive",
                                hub_split="test")
    assert len(test.dataset) == 20 and test.dataset["text"][0].startswith("Great kettle 100")


def test_save_to_disk_folders_keep_their_splits(tmp_path, capsys):
    features = datasets.Features({"label": datasets.ClassLabel(names=["1 star", "2 stars", "3 stars", "4 stars",
                                                                      "5 stars"]),
                                  "text": datasets.Value("string")})
    rows = {"label": [i % 5 for i in range(50)], "text": [f"Review {i}: {i % 5 + 1} stars worth" for i in range(50)]}
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features),
                              test=datasets.Dataset.from_dict({k: v[:10] for k, v in rows.items()}, features=features))
    dd.save_to_disk(str(tmp_path / "yelp"))
    names = "1 star,2 stars,3 stars,4 stars,5 stars"
    loaded = hd.load_labeled_data(str(tmp_path / "yelp"), text_col="text", label_col="label", label_names=names)
    assert len(loaded.dataset) == 50 and loaded.label_names == names.split(",")
    assert "saved dataset (save_to_disk); reading its train split (50 rows; splits: train, test)" in (
        capsys.readouterr().out)
    with pytest.raises(hd.DataError, match="has the splits train, test, not 'validation'"):
        hd.load_labeled_data(tmp_path / "yelp", text_col="text", label_col="label", hub_split="validation")
    # one Dataset saved alone is the train split
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "one"))
    assert len(hd.load_labeled_data(tmp_path / "one", text_col="text", label_col="label",
                                    label_names=names).dataset) == 50


def test_spark_part_files_are_one_table(tmp_path):
    out = tmp_path / "reviews.parquet"  # Spark names the folder like a file
    out.mkdir()
    _reviews(25, 0).to_parquet(out / "part-00000-1f2e.c000.snappy.parquet")
    _reviews(25, 25).to_parquet(out / "part-00001-1f2e.c000.snappy.parquet")
    (out / "_SUCCESS").write_text("")
    (out / ".part-00000-1f2e.c000.snappy.parquet.crc").write_bytes(b"\x00\x01")
    (out / "README.txt").write_text("Exported from the reviews warehouse on 2026-11-01.\n")
    loaded = hd.load_labeled_data(out, text_col="content", label_col="label", label_names="negative,positive")
    assert len(loaded.dataset) == 50


def test_folders_that_cannot_be_one_table_say_why(tmp_path):
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "README.md").write_text("nothing here")
    with pytest.raises(hd.DataError, match="folder without data files"):
        hd.load_labeled_data(empty, text_col="text", label_col="label")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _reviews(10).to_csv(mixed / "a.csv", index=False)
    _reviews(10).to_parquet(mixed / "b.parquet")
    with pytest.raises(hd.DataError, match=r"several kinds \(.csv, .parquet\)"):
        hd.load_labeled_data(mixed, text_col="content", label_col="label")
    odd = tmp_path / "odd"
    odd.mkdir()
    _reviews(10).to_parquet(odd / "train-00000-of-00002.parquet")
    _reviews(10).rename(columns={"content": "body"}).to_parquet(odd / "train-00001-of-00002.parquet")
    with pytest.raises(hd.DataError, match="do not share their columns"):
        hd.load_labeled_data(odd, text_col="content", label_col="label")
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    _reviews(10).to_csv(only_test / "test.csv", index=False)
    with pytest.raises(hd.DataError, match="has files for the splits test, not 'train'"):
        hd.load_labeled_data(only_test, text_col="content", label_col="label")


def test_unreadable_lines_of_any_file_in_a_folder_are_reported_with_its_name(tmp_path):
    folder = tmp_path / "glue"
    folder.mkdir()
    (folder / "train-a.tsv").write_text("label\tsentence\n1\tfine line\n0\tanother\n")
    (folder / "train-b.tsv").write_text("label\tsentence\n1\tok\n0\tbad\textra\tfields\n")
    frame, used = _readers.read_folder(folder)
    assert len(frame) == 3
    assert any("train-b.tsv" in line for lines in used.skipped.values() for line in lines)


def test_summarization_folders_saved_to_disk_or_in_parts(tmp_path, capsys):
    def articles(n, start=0):
        return {"document": [f"Article {i}: the council approved plan {i} after a long debate." for i in
                             range(start, start + n)],
                "summary": [f"Plan {i} approved." for i in range(start, start + n)],
                "id": [str(30000000 + i) for i in range(start, start + n)]}
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict(articles(40)),
                              validation=datasets.Dataset.from_dict(articles(5, 100)),
                              test=datasets.Dataset.from_dict(articles(5, 200)))
    dd.save_to_disk(str(tmp_path / "xsum"))
    loaded = hd.load_pair_splits(tmp_path / "xsum", source_col="document", target_col="summary", id_col="id")
    assert loaded.how == "the dataset's own splits"
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 40, "validation": 5, "test": 5}
    assert "using its splits train (40 rows), validation (5 rows), test (5 rows)" in capsys.readouterr().out
    parts = tmp_path / "parts"
    parts.mkdir()
    pd.DataFrame(articles(30)).to_json(parts / "part-0.jsonl", orient="records", lines=True)
    pd.DataFrame(articles(30, 30)).to_json(parts / "part-1.jsonl", orient="records", lines=True)
    loaded = hd.load_pair_splits(parts, source_col="document", target_col="summary", id_col="id")
    assert loaded.how == "a seeded 80/10/10 split" and sum(len(v) for v in loaded.splits.values()) == 60


def test_a_hub_download_with_several_configurations_is_not_mixed(tmp_path):
    """`hf download nyu-mll/glue --repo-type dataset`: cola/ and sst2/ share their columns; mixing them
    would be silent nonsense."""
    for config in ("cola", "sst2"):
        (tmp_path / "glue" / config).mkdir(parents=True)
        pd.DataFrame({"sentence": [f"{config} sentence {i}" for i in range(10)], "label": [i % 2 for i in range(10)],
                      "idx": range(10)}).to_parquet(tmp_path / "glue" / config / "train-00000-of-00001.parquet")
    with pytest.raises(hd.DataError, match=r"same split in 2 folders \(cola, sst2\).*e\.g\. .*glue/cola"):
        hd.load_labeled_data(tmp_path / "glue", text_col="sentence", label_col="label")
    assert len(hd.load_labeled_data(tmp_path / "glue" / "sst2", text_col="sentence", label_col="label").dataset) == 10
    for config in ("cola", "sst2"):
        pd.DataFrame({"document": ["a b c"], "summary": ["a"]}).to_json(
            tmp_path / "glue" / config / "test.jsonl", orient="records", lines=True)
    with pytest.raises(hd.DataError, match="same split in 2 folders"):
        hd.load_pair_splits(tmp_path / "glue", source_col="document", target_col="summary")


def _summary_file(folder, doc_id, first, body):
    """One article of XSum's release (bbc-summary-data/<id>.summary)."""
    (folder / f"{doc_id}.summary").write_text(
        f"[SN]URL[SN]\nhttp://web.archive.org/web/2015/http://www.bbc.co.uk/news/{doc_id}\n\n[SN]TITLE[SN]\n"
        f"Title {doc_id}\n\n[SN]FIRST-SENTENCE[SN]\n{first}\n\n[SN]RESTBODY[SN]\n{body}\n")


def test_xsum_as_first_released_with_its_split_file(tmp_path, capsys):
    import json

    data = tmp_path / "bbc-summary-data"
    data.mkdir()
    ids = [str(30000000 + i) for i in range(30)]
    for i, doc_id in enumerate(ids):
        _summary_file(data, doc_id, f"Council {i} approves the new bridge.",
                      f"The council met on Monday.\nIt voted {i} to 2 for the bridge.\n\"It is a good day,\" said one.")
    (data / "broken.summary").write_text("no sections here\n")
    split = {"train": ids[:24], "validation": ids[24:27], "test": ids[27:] + ["39999999"]}
    (tmp_path / "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json").write_text(json.dumps(split))
    loaded = hd.load_pair_splits(tmp_path, source_col="document", target_col="summary", id_col="id")
    out = capsys.readouterr().out
    assert loaded.how == "the dataset's own splits" and "XSum as released: 30 .summary files" in out
    assert "(1 without the FIRST-SENTENCE / RESTBODY sections skipped: broken.summary)" in out
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 24, "validation": 3, "test": 3}
    first = loaded.splits["train"][0]
    assert first["target"] == "Council 0 approves the new bridge." and first["source"].startswith("The council met")
    assert first["source"].endswith('"It is a good day," said one.') and first["id"] == ids[0]
    # no split file: one table, split with the seed; the notebook's column names are used
    (tmp_path / "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json").unlink()
    loaded = hd.load_pair_splits(data, source_col="Input", target_col="Output")
    assert loaded.how == "a seeded 80/10/10 split" and sum(len(v) for v in loaded.splits.values()) == 30


def test_source_and_target_line_files(tmp_path, capsys):
    """xsum.tar.gz of transformers' seq2seq examples: train.source / train.target, val.*, test.*."""
    for split, n in (("train", 40), ("val", 5), ("test", 5)):
        (tmp_path / f"{split}.source").write_text("".join(f"Article {split} {i} about the harbour plan .\n"
                                                          for i in range(n)))
        (tmp_path / f"{split}.target").write_text("".join(f"Harbour plan {i} backed .\n" for i in range(n)))
    loaded = hd.load_pair_splits(tmp_path, source_col="document", target_col="summary")
    assert loaded.how == "the dataset's own splits"
    assert {k: len(v) for k, v in loaded.splits.items()} == {"test": 5, "train": 40, "validation": 5}
    assert ".source / .target line files: test 5, train 40, validation 5" in capsys.readouterr().out
    (tmp_path / "val.target").write_text("only one line\n")
    with pytest.raises(hd.DataError, match="val.source has 5 lines but val.target has 1"):
        hd.load_pair_splits(tmp_path, source_col="document", target_col="summary")
    (tmp_path / "val.target").unlink()
    with pytest.raises(hd.DataError, match="has no val.target beside it"):
        hd.load_pair_splits(tmp_path, source_col="document", target_col="summary")


def test_dataset_archives_as_downloaded(tmp_path, capsys):
    """The original `amazon_review_polarity_csv.tgz` (headerless train.csv / test.csv, labels 1/2, a readme);
    the PhraseBank's release zip (four alternatives: refused, naming them); a tar that would write outside
    its folder (refused); `xsum.tar.gz` of .source / .target line files for the summarizers."""
    import io
    import tarfile
    import zipfile

    root = tmp_path / "amazon_review_polarity_csv"
    root.mkdir()
    for split, n in (("train", 40), ("test", 10)):
        frame = _reviews(n)
        frame["label"] += 1
        frame.to_csv(root / f"{split}.csv", header=False, index=False)
    (root / "readme.txt").write_text("The Amazon reviews polarity dataset is constructed by ...\n")
    with tarfile.open(tmp_path / "amazon_review_polarity_csv.tgz", "w:gz") as archive:
        archive.add(root, arcname=root.name)
    options = {"text_col": "title+content", "label_col": "label", "columns": ["label", "title", "content"],
               "label_names": "negative,positive"}
    loaded = hd.load_labeled_data(tmp_path / "amazon_review_polarity_csv.tgz", **options)
    assert len(loaded.dataset) == 40 and loaded.source.kind == "archive"
    assert "reading 1 file as its train table: amazon_review_polarity_csv/train.csv" in capsys.readouterr().out
    assert len(hd.load_labeled_data(tmp_path / "amazon_review_polarity_csv.tgz", hub_split="test",
                                    **options).dataset) == 10

    with zipfile.ZipFile(tmp_path / "FinancialPhraseBank-v1.0.zip", "w") as archive:
        for level in ("50", "66", "75", "All"):
            archive.writestr(f"FinancialPhraseBank-v1.0/Sentences_{level}Agree.txt", "Sales rose .@positive\n")
        archive.writestr("__MACOSX/FinancialPhraseBank-v1.0/._Sentences_50Agree.txt", "\x00")
    with pytest.raises(hd.DataError, match=r"holds 4 data files \(FinancialPhraseBank-v1.0/Sentences_50Agree.txt"):
        hd.load_labeled_data(tmp_path / "FinancialPhraseBank-v1.0.zip", text_col="sentence", label_col="label")

    with tarfile.open(tmp_path / "evil.tar", "w") as archive:
        for name in ("train.csv", "../escaped.csv"):
            data = b"text,label\nfine,positive\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(hd.DataError, match="Cannot unpack .*evil.tar"):
        hd.load_labeled_data(tmp_path / "evil.tar", text_col="text", label_col="label")
    assert not (tmp_path / "escaped.csv").exists()

    with tarfile.open(tmp_path / "xsum.tar.gz", "w:gz") as archive:
        for split, n in (("train", 20), ("val", 3), ("test", 3)):
            for ext, line in (("source", "Article {} about the harbour plan ."), ("target", "Plan {} backed .")):
                data = "".join(line.format(i) + "\n" for i in range(n)).encode()
                info = tarfile.TarInfo(f"xsum/{split}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    loaded = hd.load_pair_splits(tmp_path / "xsum.tar.gz", source_col="document", target_col="summary")
    assert loaded.how == "the dataset's own splits" and len(loaded.splits["train"]) == 20
    assert loaded.source.kind == "archive" and loaded.source.used.endswith("xsum.tar.gz")


def test_a_script_dataset_repo_reads_its_zipped_data_or_says_why_not(tmp_path):
    """`hf download takala/financial_phrasebank --repo-type dataset`: a loading script, a README and
    data/FinancialPhraseBank-v1.0.zip (four agreement levels); a repo with the script alone."""
    import zipfile

    repo = tmp_path / "financial_phrasebank"
    (repo / "data").mkdir(parents=True)
    (repo / "financial_phrasebank.py").write_text("import datasets\n")
    (repo / "README.md").write_text("---\nlicense: cc-by-nc-sa-3.0\n---\n")
    with zipfile.ZipFile(repo / "data" / "FinancialPhraseBank-v1.0.zip", "w") as archive:
        for level in ("50", "66", "75", "All"):
            archive.writestr(f"FinancialPhraseBank-v1.0/Sentences_{level}Agree.txt", "Sales rose .@positive\n")
        archive.writestr("FinancialPhraseBank-v1.0/License.txt", "CC BY-NC-SA 3.0\n")
        archive.writestr("FinancialPhraseBank-v1.0/README.txt", "The data set ...\n")
    with pytest.raises(hd.DataError, match=r"holds 4 data files \(FinancialPhraseBank-v1.0/Sentences_50Agree"):
        hd.load_labeled_data(repo, text_col="sentence", label_col="label")
    (repo / "data" / "FinancialPhraseBank-v1.0.zip").unlink()
    with pytest.raises(hd.DataError, match="loading script financial_phrasebank.py is not run"):
        hd.load_labeled_data(repo, text_col="sentence", label_col="label")
