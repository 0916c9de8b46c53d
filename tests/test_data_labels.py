"""Labels and texts read as users meant them (issue 26, part 4): numbers are numbers (`1` = `01` = `1.0`),
Excel's `NA` is a label, word lists are text, invisible rows are dropped and said, one broken JSON line is one
dropped line, and a recipe's default label names give way to the data's own names."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import _readers
from helpers import data as hd

_SENTENCES = ["Operating profit rose to EUR 13.1 mn", "Net sales decreased by 5 %", "The company will hold its AGM",
              "Orders surged in the fourth quarter", "The plant was closed after losses", "Talks continue next week"]


def _text(i: int) -> str:
    return f"{_SENTENCES[i % len(_SENTENCES)]} (item {i})"


def test_leading_zeros_are_one_class_and_label_names_pairs_find_them(tmp_path):
    path = tmp_path / "ratings.csv"
    labels = ["1", "01", "3", "03", "5", "05"] * 5
    pd.DataFrame({"label": labels, "text": [_text(i) for i in range(30)]}).to_csv(path, index=False)
    loaded = hd.load_labeled_data(path)
    assert loaded.label_names == ["1", "3", "5"]
    assert "written several ways, each read as one label: 1 = 01, 3 = 03, 5 = 05" in loaded.label_rule
    named = hd.load_labeled_data(path, label_names="1=neg,3=neu,5=pos")
    assert named.label_names == ["neg", "neu", "pos"]
    assert sorted(set(named.dataset["label"])) == ["neg", "neu", "pos"] and len(named.dataset) == 30


def test_two_and_two_point_zero_are_the_number_two(tmp_path):
    path = tmp_path / "stars.csv"
    pd.DataFrame({"label": ["1", "2", "2.0", "3.0", "3"] * 6, "text": [_text(i) for i in range(30)]}).to_csv(
        path, index=False)
    loaded = hd.load_labeled_data(path)
    assert loaded.label_names == ["1", "2", "3"]
    stars = hd.load_labeled_data(path, label_names="one star,two stars,three stars")
    assert "1-based" in stars.label_rule and sorted(set(stars.dataset["label"])) == ["one star", "three stars",
                                                                                   "two stars"]
    assert hd.load_labeled_data(path, label_names="2=two,1=one,3=three").label_names == ["two", "one", "three"]
    assert _readers.normalize_label("+7") == _readers.normalize_label(" 07 ") == _readers.normalize_label(7.0) == "7"
    assert _readers.normalize_label("0.50") == "0.5" and _readers.normalize_label("-0") == "0"


def test_excel_keeps_the_label_na_as_csv_does(tmp_path):
    frame = pd.DataFrame({"region": ["NA", "EU", "APAC", "NA", "EU", "APAC"] * 3,
                          "text": [_text(i) for i in range(18)]})
    frame.loc[17, "region"] = None  # a blank cell is still missing
    frame.to_excel(tmp_path / "regions.xlsx", index=False)
    frame.to_csv(tmp_path / "regions.csv", index=False)
    book = hd.load_labeled_data(tmp_path / "regions.xlsx", label_col="region")
    csv = hd.load_labeled_data(tmp_path / "regions.csv", label_col="region")
    assert book.label_names == csv.label_names == ["APAC", "EU", "NA"]
    assert book.label_names == csv.label_names and len(book.dataset) == len(csv.dataset) == 17
    assert book.report.dropped == {"missing label": 1}


def test_parquet_word_lists_are_joined_and_other_lists_refused(tmp_path, capsys):
    words = [np.array(_text(i).split()) for i in range(12)]
    pd.DataFrame({"tokens": words, "label": ["up", "down"] * 6}).to_parquet(tmp_path / "tokens.parquet")
    loaded = hd.load_labeled_data(tmp_path / "tokens.parquet", text_col="tokens")
    assert loaded.dataset["text"][0] == _text(0) and "['" not in "".join(loaded.dataset["text"])
    assert "column 'tokens' holds lists of words" in capsys.readouterr().out
    pd.DataFrame({"ids": [[101, 2054 + i, 102] for i in range(6)], "label": ["a", "b"] * 3}).to_parquet(
        tmp_path / "ids.parquet")
    with pytest.raises(hd.DataError, match=r"Column 'ids' holds lists of int.*not text; set TEXT_COL"):
        hd.load_labeled_data(tmp_path / "ids.parquet", text_col="ids")
    pd.DataFrame({"meta": [{"title": _text(i)} for i in range(6)], "label": ["a", "b"] * 3}).to_parquet(
        tmp_path / "records.parquet")
    with pytest.raises(hd.DataError, match=r"Column 'meta' holds records"):
        hd.load_labeled_data(tmp_path / "records.parquet", text_col="meta")


def test_invisible_rows_are_dropped_and_reported_like_empty_ones(tmp_path):
    texts = [_text(i) for i in range(10)] + ["\u200b", "\u200b\u200c\u200d", "\ufeff \u2060", "\u0301", "", "  "]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": ["pos", "neg"][i % 2]}) + "\n"
                            for i, t in enumerate(texts)))
    loaded = hd.load_labeled_data(path)
    assert len(loaded.dataset) == 10 and loaded.report.rows_read == 16
    assert loaded.report.dropped == {"empty text": 2,
                                     "no visible characters (only zero-width, control or format ones)": 4}
    assert "\\u200b" in loaded.report.summary()
    pairs = pd.DataFrame({"document": ["Shares rose.", "\u200b\u200b", "Talks ended."],
                          "summary": ["Up.", "Nothing.", "\u2060"]})
    _, report = hd._clean_pairs(pairs, "document", "summary")
    assert report.dropped == {"empty source": 1, "empty target": 1}


def test_a_broken_json_line_is_dropped_and_named_not_the_whole_file(tmp_path, capsys):
    lines = [json.dumps({"text": _text(i), "label": ["pos", "neg"][i % 2]}) for i in range(8)]
    lines.insert(4, '{"text": "Sales fell", "label": "neg"')  # line 5: a missing brace
    lines.insert(7, '["not", "an", "object"]')  # line 8
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    loaded = hd.load_labeled_data(path)
    assert "data.jsonl: line 5 (" in capsys.readouterr().out
    assert len(loaded.dataset) == 8 and loaded.report.rows_read == 10
    reason = "line that is not a JSON object (unreadable JSON)"
    assert loaded.report.dropped == {reason: 2}
    assert loaded.report.examples[reason][0].startswith('line 5: {"text": "Sales fell"')
    path.write_text('{"text": "a"\n{"text": "b"\n')
    with pytest.raises(hd.DataError, match=r"line 1 \(.*\) and no other line is a JSON object"):
        hd.load_labeled_data(path)
    array = tmp_path / "data.json"
    array.write_text('[\n {"text": "a", "label": "x"},\n {"text": "b" "label": "y"}\n]\n')
    with pytest.raises(hd.DataError, match=r"not valid JSON \(line 3, column"):
        hd.load_labeled_data(array)


def test_a_recipes_default_names_give_way_to_the_datas_names(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"label": ["pos", "neg"] * 10, "title": [f"T{i}" for i in range(20)],
                  "content": [_text(i) for i in range(20)]}).to_csv(path, index=False)
    options = {"text_col": "title+content", "label_col": "label", "columns": ["label", "title", "content"]}
    with pytest.raises(hd.DataError, match="do not match LABEL_NAMES"):  # outside a notebook run: the caller's
        hd.load_labeled_data(path, label_names="negative,positive", **options)
    # a notebook run that left LABEL_NAMES at its default says so (`"LABEL_NAMES" not in run.set_by_user`)
    loaded = hd.load_labeled_data(path, label_names="negative,positive", label_names_default=True, **options)
    assert loaded.label_names == ["neg", "pos"]
    assert loaded.label_rule.startswith("LABEL_NAMES was the recipe's default (negative,positive), which names "
                                        "integer labels; the data's labels are names, so labels taken from the data")
    ints = tmp_path / "ints.csv"  # integer labels still get the recipe's names
    pd.DataFrame({"label": [0, 1] * 10, "content": [_text(i) for i in range(20)],
                  "title": ["t"] * 20}).to_csv(ints, index=False)
    assert hd.load_labeled_data(ints, label_names="negative,positive", label_names_default=True,
                                **options).label_names == ["negative", "positive"]
