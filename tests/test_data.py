"""Loaders: every all-data.csv variant users have, other formats, cleaning report, bad files."""

from __future__ import annotations

import pandas as pd
import pytest

import helpers as hp
from helpers import _readers
from helpers._offline import samples
from helpers.data import DataError

LABELS = ["negative", "neutral", "positive"]


def load(path, **kwargs):
    return hp.data.load_labeled_data(path, text_col="sentence", label_col="label", columns=["label", "sentence"],
                                     label_names=LABELS, **kwargs)


@pytest.mark.parametrize("header,newline", [(None, "\n"), (None, "\r\n"), ("sentiment,text", "\n"),
                                            ("result,content", "\r\n"), ("label,sentence", "\n")])
def test_phrasebank_variants_load_the_same_rows(tmp_path, header, newline):
    path = samples.write_phrasebank_csv(tmp_path / "all-data.csv", n=200, header=header, newline=newline)
    loaded = load(path)
    assert loaded.source.encoding == "latin-1"  # the sample has non-ASCII names (Wärtsilä) in latin-1
    assert loaded.source.header is (header is not None)
    assert len(loaded.dataset) == loaded.report.rows_kept
    assert set(loaded.dataset["label"]) == set(LABELS)
    texts = list(loaded.dataset["text"])
    assert any("Wärtsilä" in t or "Seppälä" in t or "Ahlström" in t for t in texts)  # decoded, not mojibake
    assert not any(t.endswith("\r") for t in texts)


def test_cleaning_reports_every_dropped_row(tmp_path):
    path = tmp_path / "all-data.csv"
    rows = ["neutral,The plant employs 300 people .", "neutral,The plant employs 300 people .",  # duplicate
            "positive,Sales rose 5 % .", "negative,Sales rose 5 % .",  # conflicting labels: both go
            "neutral,   ", "positive,Profit doubled .", "negative,The company cut 40 jobs .",
            "neutral,Talks continue .", "positive,Orders grew .", "negative,Margins fell ."]
    path.write_bytes("\n".join(rows).encode("latin-1"))
    loaded = load(path)
    report = loaded.report
    assert report.rows_read == 10
    assert report.dropped == {"empty text": 1, "conflicting labels (same text, different labels)": 2,
                              "duplicate (same text and label)": 1}
    assert report.rows_kept == len(loaded.dataset) == 6
    assert "Sales rose" not in " ".join(loaded.dataset["text"])
    assert "duplicate" in report.summary()


def test_utf8_file_and_numeric_labels(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("label,sentence\n0,Ahlström fell .\n1,Meeting held .\n2,Profit rose .\n", encoding="utf-8")
    loaded = load(path)
    assert loaded.source.encoding == "utf-8"
    assert list(loaded.dataset["label"]) == LABELS  # 0..K-1 taken as indices into label_names
    assert "Ahlström" in loaded.dataset["text"][0]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".tsv"])
def test_other_formats(tmp_path, suffix):
    frame = pd.DataFrame({"sentence": ["Profit rose .", "Sales fell .", "AGM in May ."] * 2,
                          "label": ["positive", "negative", "neutral"] * 2})
    frame["sentence"] = frame["sentence"] + pd.Series(range(6)).astype(str)
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t", index=False)
    loaded = load(path)
    assert len(loaded.dataset) == 6 and loaded.report.dropped == {}


@pytest.mark.parametrize("content,needle,fix", [
    (None, "not found", "DATA_SOURCE"),
    ("", "is empty", "DATA_SOURCE"),
    ("a,b,c\n1,2,3\n", "no column", "TEXT_COL / LABEL_COL"),
    ("bullish,Stocks rallied .\nneutral,Talks continue .\n", "do not match LABEL_NAMES: found {bullish, neutral}",
     "None to take them from the data"),
    ("positive,Profit rose .\n1,Talks continue .\n", "mixes numbers and names", "consistent"),
])
def test_bad_files_give_one_line_errors_with_a_fix(tmp_path, content, needle, fix):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        load(path)
    message = str(err.value)
    assert needle in message and fix in message
    assert "\n" not in message


def test_sample_fallback_is_announced_and_recorded(capsys):
    loaded = load("auto", sample="financial_phrasebank")
    assert loaded.source.standin and loaded.source.kind == "sample"
    assert "OFFLINE STAND-IN DATA" in capsys.readouterr().out


def test_unreachable_hub_dataset_without_standin_is_a_clear_error():
    with pytest.raises(DataError, match="ALLOW_STANDIN=True"):
        load("someone/financial_phrasebank", sample="financial_phrasebank", allow_standin=False)


@pytest.mark.parametrize("name", sorted(samples.SAMPLES))
def test_committed_samples_match_the_generator(tmp_path, name):
    file_name, writer = samples.SAMPLES[name]
    fresh = writer(tmp_path / file_name)
    assert fresh.read_bytes() == _readers.sample_path(name).read_bytes(), "run `workbook samples` and commit"


def test_stratified_split_is_seeded_and_keeps_balance():
    loaded = load("auto", sample="financial_phrasebank")
    a = hp.data.stratified_split(loaded.dataset, seed=1)
    b = hp.data.stratified_split(loaded.dataset, seed=1)
    n = len(loaded.dataset)
    assert [len(a[s]) for s in ("train", "validation", "test")] == [len(b[s]) for s in ("train", "validation", "test")]
    assert list(a["test"]["text"]) == list(b["test"]["text"])
    assert abs(len(a["train"]) - 0.8 * n) <= 2 and abs(len(a["test"]) - 0.1 * n) <= 2
    assert not set(a["train"]["text"]) & set(a["test"]["text"])
    share = {s: list(a[s]["label"]).count("neutral") / len(a[s]) for s in a}
    assert max(share.values()) - min(share.values()) < 0.03


def test_cap_samples_keeps_every_class():
    loaded = load("auto", sample="financial_phrasebank")
    capped = hp.data.cap_samples(loaded.dataset, 30, seed=0)
    assert len(capped) == 30 and set(capped["label"]) == set(LABELS)
    assert hp.data.cap_samples(loaded.dataset, None) is loaded.dataset


def test_label_ids_follow_the_model_order_by_name():
    loaded = load("auto", sample="financial_phrasebank")
    finbert_order = {"positive": 0, "negative": 1, "neutral": 2}
    encoded = hp.data.to_label_ids(loaded.dataset, finbert_order)
    for name, label_id in zip(loaded.dataset["label"][:50], encoded["label"][:50]):
        assert finbert_order[name] == label_id
    with pytest.raises(DataError, match="not in the model's label map"):
        hp.data.to_label_ids(loaded.dataset, {"positive": 0, "negative": 1})


AMAZON = ["negative", "positive"]


@pytest.mark.parametrize("fasttext", [False, True])
def test_amazon_original_csv_and_fasttext_layouts(tmp_path, fasttext):
    path = samples.write_amazon_csv(tmp_path / ("train.ft.txt" if fasttext else "train.csv"), n=100,
                                    fasttext=fasttext)
    loaded = hp.data.load_labeled_data(path, text_col="title+content", label_col="label", label_names=AMAZON,
                                       columns=["label", "title", "content"])
    rows = samples.amazon_rows(100)
    first_label, first_title, first_text = rows[0]
    assert loaded.dataset[0]["text"] == f"{first_title}. {first_text}"
    assert loaded.dataset[0]["label"] == AMAZON[first_label - 1]  # 1/2 in the file -> negative/positive
    assert set(loaded.dataset["label"]) == set(AMAZON)


def test_yelp_original_csv_unescapes_newlines_and_reads_stars(tmp_path):
    stars = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]
    path = samples.write_yelp_csv(tmp_path / "train.csv", n=50)
    loaded = hp.data.load_labeled_data(path, text_col="text", label_col="label", label_names=stars,
                                       columns=["label", "text"], unescape=True)
    first_stars, first_text = samples.yelp_rows(50)[0]
    assert "\\n" in first_text and "\\n" not in loaded.dataset[0]["text"] and "\n\n" in loaded.dataset[0]["text"]
    assert loaded.dataset[0]["label"] == stars[first_stars - 1]


def test_integer_labels_of_unclear_base_are_refused(tmp_path):
    path = tmp_path / "stars.csv"
    path.write_text("2,ok\n3,fine\n2,meh\n")
    with pytest.raises(DataError, match="count from 0 or 1"):
        hp.data.load_labeled_data(path, text_col="text", label_col="label", columns=["label", "text"],
                                  label_names=["1 star", "2 stars", "3 stars", "4 stars", "5 stars"])


def test_ordinal_metrics():
    m = hp.metrics._ordinal_metrics([0, 1, 2, 4], [0, 2, 4, 3])
    assert m == {"off_by_one_accuracy": 0.75, "mae_stars": 1.0}
