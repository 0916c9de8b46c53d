"""Readers of layouts that are not one clean table: text classification as class folders, and JSON lines with
broken lines. `helpers.data` calls them; import the data functions from there.

Class folders: one folder per label, one text file per example, as
IMDB's `aclImdb/` (`train/pos`, `train/neg`, `train/unsup`, `test/pos`, `test/neg`, with `README`
and `imdb.vocab` beside), 20 Newsgroups (`20news-bydate-train/alt.atheism/49960`), BBC News (`bbc/business/001.txt`)
and what scikit-learn's `load_files` and Keras' `text_dataset_from_directory` read. Each split becomes one table
(`text`, `label` = the folder's name, `file`); unlabelled folders (`unsup`) and files that are not examples are
left out and counted, never read as a class (`helpers.data.read_folder` reads folders through this).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from .data import DataError, DataSource, decode_bytes

TEXT_SUFFIXES = frozenset({"", ".txt", ".text"})  # 20 Newsgroups' files have no suffix at all
UNLABELLED = frozenset({"unsup", "unsupervised", "unlabeled", "unlabelled", "unlabel", "nolabel", "no_label",
                        "no-label"})
_SPLIT_WORDS = {"train": "train", "training": "train", "dev": "validation", "valid": "validation",
                "validation": "validation", "val": "validation", "test": "test", "testing": "test"}
_SPLIT_FOLDER = re.compile(r"(?:^|[-_. ])(" + "|".join(_SPLIT_WORDS) + r")(?:[-_. ]|$)")
_SPLIT_FILE = re.compile(r"(" + "|".join(_SPLIT_WORDS) + r")([-_.]|$)")
_NOT_EXAMPLES = ("readme", "license", "licence")


def _subfolders(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX")


def is_example_name(name: str) -> bool:
    """True for a file name that can hold one example: `.txt`, `.text` or no suffix; not hidden, not a README."""
    lowered = name.lower()
    return (not lowered.startswith((".", "_")) and os.path.splitext(lowered)[1] in TEXT_SUFFIXES
            and not lowered.startswith(_NOT_EXAMPLES))


def _holds_examples(folder: Path) -> bool:
    """True when a folder directly holds example files (not split tables such as `train.txt`), judged by the
    first one: cheap even for IMDB's 50,000-file folders."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and is_example_name(entry.name):
                return not _SPLIT_FILE.match(entry.name.lower())
    return False


def _labelled_classes(folder: Path) -> list[Path]:
    return [d for d in _subfolders(folder) if d.name.lower() not in UNLABELLED and _holds_examples(d)]


def _layout(folder: Path) -> tuple[Path, dict[str, list[Path]]] | None:
    """(the dataset's top folder, {split: [folders whose subfolders are its classes]}), or None."""
    for _ in range(3):  # the wrapper folders of an unpacked archive (aclImdb_v1/aclImdb/)
        inner = _subfolders(folder)
        with os.scandir(folder) as entries:
            files = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
        if len(inner) != 1 or files:
            break
        folder = inner[0]
    splits: dict[str, list[Path]] = {}
    for sub in _subfolders(folder):
        match = _SPLIT_FOLDER.search(sub.name.lower())
        if match and any(_holds_examples(d) for d in _subfolders(sub)):
            splits.setdefault(_SPLIT_WORDS[match.group(1)], []).append(sub)
    if any(len(_labelled_classes(root)) >= 2 for roots in splits.values() for root in roots):
        return folder, {s: splits[s] for s in ("train", "validation", "test") if s in splits}
    return (folder, {"train": [folder]}) if len(_labelled_classes(folder)) >= 2 else None


def class_folder_splits(folder: str | Path) -> dict[str, list[Path]] | None:
    """{split: [folders whose subfolders are its classes]} when `folder` is text data as class folders, else None.

    Split folders are named after a split (`train`, `test`, `dev`, `validation`, also `20news-bydate-train`);
    without them the folder itself is one table (the `train` split). At least two labelled class folders are
    needed: one class folder of text files is not this layout. Wrapper folders of an unpacked archive
    (`aclImdb_v1/aclImdb/`) are looked through."""
    found = _layout(Path(folder))
    return None if found is None else found[1]


def _read_bytes(path: str) -> bytes:
    """A file's bytes by plain system calls (open, read to the end, close): a third faster than `open().read()`
    for IMDB-sized files, which matters at 100,000 of them. The file is closed before the next one opens."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_text(path: str) -> str | None:
    """One example file's text, decoded as the other readers decode (UTF-16 with a BOM, UTF-8, else latin-1;
    newlines normalized); None for a binary file. Plain UTF-8 takes a fast path."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text or "\r" in text or text[:1] == "\ufeff":
        text = decode_bytes(raw)[0]
    return None if "\x00" in text else text


def _list_class(folder: Path) -> tuple[list[str], Counter]:
    """(example files under a class folder, in name order, as paths; the other files by suffix)."""
    examples, others = [], Counter()
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(files):
            if is_example_name(name):
                examples.append(os.path.join(here, name))
            else:
                others[os.path.splitext(name)[1].lower() or name] += 1
    return examples, others


def _beside(folder: Path, roots: list[Path] | None = None) -> list[str]:
    """Names of the files and folders beside the data in `folder` (a README, `imdb.vocab`, `urls_pos.txt`)."""
    keep = {r.name for r in roots or []}
    with os.scandir(folder) as entries:
        names = [e.name + ("/" if e.is_dir() else "") for e in entries
                 if not e.name.startswith(".") and e.name not in keep and not (roots is None and e.is_dir())]
    return sorted(names)


def _files(count: int) -> str:
    return f"{count:,} file{'s' if count != 1 else ''}"


def _shown(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _list_split(root: Path) -> tuple[list[str], list[str], Counter, list[str]]:
    """(example files, their labels, other files by suffix, what was left out) of one split's class folders."""
    files, labels, others, left = [], [], Counter(), []
    for folder in _subfolders(root):
        examples, extra = _list_class(folder)
        if folder.name.lower() in UNLABELLED:
            left.append(f"{folder.name}/ ({_files(len(examples) + sum(extra.values()))}, no label)")
            continue
        others.update(extra)
        if not examples:
            left.append(f"{folder.name}/ (no text files)")
        files.extend(examples)
        labels.extend([folder.name] * len(examples))
    return files, labels, others, left


def read_class_table(root: Path, split: str | None, where: str) -> tuple[pd.DataFrame, str]:
    """One split's class folders as a table (`text`, `label`, `file` relative to `root`) and the note saying
    what was read and what was left out (unlabelled folders, non-text and binary files, files beside).

    Files are read one after the other, each opened, read and closed: no file stays open. (Threads were
    measured slower: each small file is a few system calls, and the decoding holds the GIL.)"""
    files, labels, others, left = _list_split(root)
    texts = [_read_text(path) for path in files]
    if any(t is None for t in texts):
        others["binary files named like text"] += sum(t is None for t in texts)
        keep = [i for i, t in enumerate(texts) if t is not None]
        texts, labels, files = ([seq[i] for i in keep] for seq in (texts, labels, files))
    frame = pd.DataFrame({"text": pd.Series(texts, dtype="str"), "label": pd.Series(labels, dtype="str"),
                          "file": pd.Series([f[len(str(root)) + 1:] for f in files], dtype="str")})
    counts = sorted(Counter(labels).items())
    note = (f"note: {where} holds class folders: {len(frame):,} text files in {len(counts)} classes ("
            + ", ".join(f"{k} {v:,}" for k, v in counts[:8]) + (", ..." if len(counts) > 8 else "")
            + f") read as {f'its {split}' if split else 'one'} table, label = folder name")
    if others:
        left.append(f"{_files(sum(others.values()))} not text in the class folders ("
                    + ", ".join(f"{k} {v:,}" for k, v in others.most_common(4)) + ")")
    beside = [n for n in _beside(root) if not n.endswith("/")]
    if beside:
        left.append(f"{_files(len(beside))} beside the class folders ({_shown(beside)})")
    return frame, note + (f"; left out: {'; '.join(left)}" if left else "")


def read_class_splits(folder: str | Path, split: str = "train", *, every: bool = False
                      ) -> dict[str, tuple[pd.DataFrame, DataSource]]:
    """{split: (table, source)} of a class-folder dataset (see `class_folder_splits`): its `split` (refused,
    naming those it has, when missing) and, with `every`, its other splits. Says per split what was read and
    what was left out."""
    folder = Path(folder)
    found = _layout(folder)
    if found is None:
        raise DataError(f"{folder} is not text data as class folders (a folder per label holding .txt files); "
                        "point DATA_SOURCE at such a folder or at a data file.")
    top, layout = found
    if split not in layout:
        raise DataError(f"{folder} holds class folders for the splits {', '.join(layout)}, not {split!r}; pick one "
                        "of them, or point DATA_SOURCE at the class folders of that split.")
    roots = [r for rs in layout.values() for r in rs]
    if roots != [top]:  # split folders: say what lies beside them (a README, imdb.vocab)
        beside = _beside(top, roots)
        if beside:
            print(f"note: {folder.name}: left out {len(beside)} entries beside the split folders ({_shown(beside)})")
    out = {}
    for name in [split] + ([s for s in layout if s != split] if every else []):
        frames = []
        for root in layout[name]:
            where = f"{folder.name}/{root.relative_to(folder)}" if root != folder else folder.name
            frame, note = read_class_table(root, name if roots != [top] else None, where)
            print(note)
            frames.append(frame)
        table = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        out[name] = table, DataSource(requested=str(folder), used=str(folder), kind="folder", encoding="per file",
                                      layout="class folders",
                                      parts=[f"{folder.name}/{r.relative_to(folder)}" if r != folder else folder.name
                                             for r in layout[name]])
    return out


def read_json_records(text: str, path: Path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """JSON lines (or one JSON array) as a table, for `read_table`. A line that is not a JSON object is set
    aside and reported with its number, as a CSV's bad lines are, instead of refusing the whole file at a byte
    position; a broken JSON array is refused naming its line and column."""
    lines = text.lstrip()[:1] != "["
    try:
        return pd.read_json(io.StringIO(text), lines=lines, dtype=False), {}
    except ValueError as err:
        if not lines:
            try:
                json.loads(text)
            except ValueError as bad:
                where = f"line {bad.lineno}, column {bad.colno}: {bad.msg}" if hasattr(bad, "lineno") else str(bad)
                raise DataError(f"{path} is not valid JSON ({where}); fix that line, or write one JSON object per "
                                "line (.jsonl).") from err
            raise DataError(f"{path} is not a JSON array of records ({err}); write one JSON object per line.") from err
    rows, bad_lines, first = [], [], None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            record, why = None, err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        else:
            why = f"a JSON {type(record).__name__}, not an object"
        if isinstance(record, dict):
            rows.append(record)
        else:
            bad_lines.append(f"line {number}: {line.strip()[:80]}")
            first = first or f"line {number} ({why})"
    if not bad_lines:
        return pd.DataFrame(rows), {}
    if not rows:
        raise DataError(f"{path} is not JSON lines: {first} and no other line is a JSON object; write one JSON "
                        "object per line.")
    print(f"note: {path.name}: {first} is not a JSON object; {len(bad_lines):,} such "
          f"line{'s' if len(bad_lines) > 1 else ''} set aside (reported as dropped), {len(rows):,} read")
    return pd.DataFrame(rows), {"line that is not a JSON object (unreadable JSON)": bad_lines}
