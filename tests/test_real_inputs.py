"""Data in the layouts users bring (not the project's own samples): their columns, labels, sentence pairs,
GLUE-style TSV with stray quotes, compressed and UTF-16 files, other delimiters, and real AG News."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

import helpers as hp
from helpers.data import DataError

AG_NEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news" / "test.csv"
AMAZON_LAYOUT = ["label", "title", "content"]  # what notebook 02 passes for headerless files


def test_a_users_header_is_never_renamed_by_position(tmp_path, capsys):
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,label\n"
                    "The cat sat on the mat.,A cat was sitting on a mat.,paraphrase\n"
                    "Stocks fell sharply.,The weather was sunny.,different\n"
                    "He left early.,He departed ahead of time.,paraphrase\n")
    loaded = hp.data.load_labeled_data(path, text_col="sentence1", text_pair_col="sentence2", label_col="label",
                                       columns=AMAZON_LAYOUT)
    assert "reading it as" not in capsys.readouterr().out
    assert loaded.has_pairs and loaded.dataset[0]["text_pair"] == "A cat was sitting on a mat."
    assert loaded.label_names == ["different", "paraphrase"]


def test_review_sentiment_id_header_with_the_recipes_defaults_suggests_the_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,sentiment,id\nGreat phone.,positive,1\nBroke in a day.,negative,2\n")
    with pytest.raises(DataError) as err:
        hp.data.load_labeled_data(path, text_col="title+content", label_col="label", columns=AMAZON_LAYOUT,
                                  label_names="negative,positive")
    message = str(err.value)
    assert "columns: review, sentiment, id" in message and 'TEXT_COL="review", LABEL_COL="sentiment"' in message
    loaded = hp.data.load_labeled_data(path, text_col="review", label_col="sentiment", columns=AMAZON_LAYOUT)
    assert list(loaded.dataset["label"]) == ["positive", "negative"]


def test_a_known_variant_of_the_recipes_layout_is_renamed_and_said(tmp_path, capsys):
    path = tmp_path / "all-data.csv"
    path.write_text("sentiment,text\nneutral,Talks continue .\npositive,Profit rose .\n")
    loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label", columns=["label", "sentence"])
    assert "reading it as ['label', 'sentence']" in capsys.readouterr().out
    assert len(loaded.dataset) == 2


def test_integer_labels_are_never_mapped_onto_the_recipes_names_silently(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_text("label,sentence\n0,Sales fell .\n1,Profit rose .\n0,Costs grew .\n")
    loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label", columns=["label", "sentence"])
    assert loaded.label_names == ["0", "1"] and "taken from the data" in loaded.label_rule
    named = hp.data.load_labeled_data(path, text_col="sentence", label_col="label", label_names="0=down,1=up")
    assert list(named.dataset["label"]) == ["down", "up", "down"]


def test_one_based_topics_keep_the_users_spelling_and_print_the_rule(tmp_path):
    path = tmp_path / "topics.csv"
    path.write_text('label,title,description\n3,"Oil up","Crude rose."\n1,"Vote held","Polls closed."\n'
                    '2,"Cup final","A late goal."\n4,"New chip","Faster and smaller."\n')
    loaded = hp.data.load_labeled_data(path, text_col="title+description", label_col="label",
                                       label_names="World,Sports,Business,Sci/Tech")
    assert list(loaded.dataset["label"]) == ["Business", "World", "Sports", "Sci/Tech"]
    assert "1-based" in loaded.label_rule and "4 -> Sci/Tech" in loaded.label_rule


def test_labels_that_do_not_match_label_names_name_both_sets(tmp_path):
    path = tmp_path / "topics.csv"
    path.write_text("label,text\nsports,A goal .\nworld,A vote .\n")
    with pytest.raises(DataError, match=r"found \{sports, world\}, LABEL_NAMES has \{negative, positive\}"):
        hp.data.load_labeled_data(path, label_names="negative,positive")


def test_glue_style_tsv_with_a_stray_quote_keeps_every_row(tmp_path):
    path = tmp_path / "train.tsv"
    rows = ["sentence\tlabel", 'the movie was " great\t1', "dull and long\t0", 'he said "wow\t1',
            "a fine cast\t1", "nothing works\t0", "flat jokes\t0"]
    path.write_text("\n".join(rows) + "\n")
    loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label", label_names="neg,pos")
    assert loaded.report.rows_read == 6 and len(loaded.dataset) == 6
    assert 'the movie was " great' in loaded.dataset["text"]


def test_tsv_lines_with_the_wrong_number_of_fields_are_reported(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\nstray\ttab\t1\nfine\t1\n")
    loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label")
    assert loaded.report.rows_read == 4 and len(loaded.dataset) == 3
    assert sum(n for r, n in loaded.report.dropped.items() if "malformed line" in r) == 1


def test_csv_with_a_stray_quote_is_read_line_by_line_and_reported(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text('label,text\npositive,"Profit rose\nnegative,Sales fell\nneutral,Talks continue\n'
                    'positive,Orders grew\n')
    loaded = hp.data.load_labeled_data(path)
    assert "reading one record per line" in capsys.readouterr().out
    assert len(loaded.dataset) + sum(loaded.report.dropped.values()) == loaded.report.rows_read == 4
    assert "Sales fell" in loaded.dataset["text"]


def test_quoted_multiline_fields_stay_whole(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('label,text\n5,"Great food.\nWould come back."\n1,"Cold, slow.\nNever again."\n'
                    '3,"It was ok."\n')
    loaded = hp.data.load_labeled_data(path)
    assert len(loaded.dataset) == 3 and "Great food.\nWould come back." in loaded.dataset["text"]


@pytest.mark.parametrize("kind", ["gzip", "utf-16", "semicolon", "cr-only"])
def test_compressed_utf16_semicolon_and_cr_files(tmp_path, kind):
    text = "label,text\npositive,Profit rose .\nnegative,Sales fell .\nneutral,Talks continue .\n"
    path = tmp_path / "data.csv"
    if kind == "gzip":
        path.write_bytes(gzip.compress(text.encode()))
    elif kind == "utf-16":
        path.write_bytes(text.replace("\n", "\r\n").encode("utf-16"))
    elif kind == "semicolon":
        path.write_text(text.replace(",", ";"))
    else:
        path.write_bytes(text.replace("\n", "\r").encode())
    loaded = hp.data.load_labeled_data(path)
    assert sorted(loaded.dataset["label"]) == ["negative", "neutral", "positive"]


@pytest.mark.skipif(not AG_NEWS.exists(), reason="real AG News not present (../shared/data)")
def test_real_ag_news_with_one_based_topics():
    loaded = hp.data.load_labeled_data(AG_NEWS, text_col="title+description", label_col="label",
                                       label_names="World,Sports,Business,Sci/Tech")
    assert loaded.report.rows_read == 7600
    assert loaded.report.rows_kept == len(loaded.dataset) > 7500
    counts = hp.data._label_counts(loaded.dataset)
    assert set(counts) == {"World", "Sports", "Business", "Sci/Tech"} and min(counts.values()) > 1850


def test_excel_workbooks_as_analysts_keep_them(tmp_path, capsys):
    """A table that starts at B3 under a title, a second sheet of notes; a headerless PhraseBank sheet;
    an old .xls and a damaged .xlsx are refused with what to do."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Headlines"
    sheet["B1"] = "Q3 headlines, labelled by the desk"
    sheet.append([])
    sheet.append([None, "Headline", "Sentiment"])
    for i in range(60):
        good = i % 3 == 0
        sheet.append([None, f"Operating profit {'rose' if good else 'fell'} {i} % in the quarter",
                      "Positive" if good else "negative"])
    book.create_sheet("Notes")["A1"] = "labels checked twice"
    path = tmp_path / "desk.xlsx"
    book.save(path)
    loaded = hp.data.load_labeled_data(path, text_col="Headline", label_col="Sentiment")
    assert len(loaded.dataset) == 60 and loaded.label_names == ["negative", "Positive"]
    out = capsys.readouterr().out
    assert "desk.xlsx has 2 sheets (Headlines, Notes); reading the first, 'Headlines'" in out
    assert "the table's header is on row 3 of the sheet; the 1 row above it skipped" in out

    plain = openpyxl.Workbook()
    for i in range(30):
        plain.active.append(["neutral" if i % 2 else "positive", f"Sales were EUR {i} mn"])
    plain.save(tmp_path / "all-data.xlsx")
    loaded = hp.data.load_labeled_data(tmp_path / "all-data.xlsx", text_col="sentence", label_col="label",
                                       columns=["label", "sentence"])
    assert len(loaded.dataset) == 30 and set(loaded.label_names) == {"neutral", "positive"}

    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 100)
    with pytest.raises(DataError, match="old.xls is a .xls spreadsheet.*save it as .xlsx or as CSV"):
        hp.data.load_labeled_data(tmp_path / "old.xls", text_col="sentence", label_col="label")
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(DataError, match="Cannot read .*broken.xlsx as an Excel workbook"):
        hp.data.load_labeled_data(tmp_path / "broken.xlsx", text_col="sentence", label_col="label")


def test_the_original_phrasebank_release_sentence_at_label(tmp_path, capsys):
    """FinancialPhraseBank-v1.0/Sentences_50Agree.txt: `sentence@label`, latin-1, CRLF; an e-mail address
    inside a sentence stays in it; a line without a label is reported, not dropped silently."""
    lines = ["According to Gran , the company has no plans to move all production to Russia .@neutral",
             "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .@positive",
             "Contact ir@company.fi for the report , the company said .@neutral",
             "The company\xb4s share fell 3 % .@negative",
             "A line that lost its label ."]
    lines += [f"Net sales rose {i} % in the quarter .@positive" for i in range(20)]
    path = tmp_path / "Sentences_50Agree.txt"
    path.write_bytes("\r\n".join(lines).encode("latin-1") + b"\r\n")
    loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label", columns=["label", "sentence"])
    assert "holds `sentence@label` lines" in capsys.readouterr().out
    assert loaded.label_names == ["negative", "neutral", "positive"] and loaded.source.encoding == "latin-1"
    texts = loaded.dataset["text"]
    assert "Contact ir@company.fi for the report , the company said ." in texts
    assert "The company\xb4s share fell 3 % ." in texts
    report = loaded.report.to_dict()
    assert len(loaded.dataset) == 24 and report["rows_read"] == 25
    assert report["dropped"] == {"no @label at the end of the line": 1} and "line 5" in str(loaded.source.skipped)
