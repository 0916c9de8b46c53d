"""ONNX Runtime for the saved classifiers (notebooks 01-03, sentence pairs included): the serving engine to reach
for on CPUs, with torch the reference its answers are checked against.

- `export(folder, quantize="int8")` (`workbook export`): the classifier as ONNX with dynamic batch and sequence
  axes (torch.onnx's exporter), a LoRA classifier merged first, into `model/onnx/model.onnx`, and with int8 also
  `model_int8.onnx` (ONNX Runtime's dynamic quantization: int8 weights, activations quantized on the fly). It
  is checked against torch on real rows before it is recorded in workbook.json (fp32: the same labels,
  probabilities within 1e-4; int8: its agreement with fp32 and both accuracies, reported: int8 is a choice).
- `OnnxClassifier`: the export run with numpy, onnxruntime and the tokenizers library only, no torch (the
  serving image for ONNX folders). It answers as `hp.inference.TextClassifier` does: the same tokenization
  and truncation, padding-bounded batches, the saved temperature.
- A stale export (the weights changed after it was made) is detected by the weights' SHA-256 and never served.
Generation (04, 05) stays on torch: docs/container.md says why.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from helpers._classify import WORKBOOK_FILE, ClassifierAnswers, model_folder, read_workbook_json

__all__ = ["RUNTIMES", "OnnxClassifier", "OnnxError", "choose_runtime", "export", "load"]

SUBDIR = "onnx"
FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}
RUNTIMES = ("torch", "onnx", "onnx-int8")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_FP32_TOLERANCE = 1e-4


class OnnxError(ValueError):
    """A folder that cannot be exported or served on ONNX Runtime: one line, with the command that fixes it."""


def weights_digest(folder: Path) -> str | None:
    """SHA-256 of the folder's weights file (None when it has none here, as in the ONNX serving image)."""
    for name in _WEIGHTS:
        path = folder / name
        if path.exists():
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
    return None


def _export_problem(folder: Path, info: dict, runtime: str) -> str | None:
    """Why `runtime` cannot serve this folder (None: it can)."""
    record = info.get("onnx") or {}
    quantize = " --quantize int8" if runtime == "onnx-int8" else ""
    if runtime not in record.get("files", {}) or not (folder / record["files"][runtime]).exists():
        return (f"{folder} has no {runtime} export; make one with: workbook export {folder}{quantize} "
                "(or serve it with --runtime torch)")
    digest = weights_digest(folder)
    if digest is not None and digest != record.get("weights_sha256"):
        return (f"the ONNX export in {folder} is stale: the weights changed after it was made "
                f"({record.get('exported_at', '?')}); make it again with: workbook export {folder}{quantize}")
    return None


def choose_runtime(folder: Path, info: dict, asked: str | None) -> tuple[str, str]:
    """(the runtime, why): the one asked for (refused with the fix when it cannot serve the folder), else ONNX
    fp32 when the folder has a fresh export, else torch."""
    import importlib.util

    here = importlib.util.find_spec("onnxruntime") is not None
    if asked is not None:
        if asked not in RUNTIMES:
            raise OnnxError(f"--runtime {asked!r}: use one of {', '.join(RUNTIMES)}")
        problem = None if asked == "torch" else _export_problem(folder, info, asked)
        if problem or (asked != "torch" and not here):
            raise OnnxError(problem or f"--runtime {asked} needs ONNX Runtime: pip install onnxruntime (or "
                                       "--runtime torch)")
        return asked, "asked for"
    if info.get("onnx") and not here:
        return "torch", "not ONNX: onnxruntime is not installed here"
    if info.get("onnx"):
        problem = _export_problem(folder, info, "onnx")
        if problem is None:
            return "onnx", "the folder has an ONNX export"
        return "torch", f"not ONNX: {problem}"
    return "torch", "the folder has no ONNX export (workbook export makes one)"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class OnnxClassifier(ClassifierAnswers):
    """An exported classifier on ONNX Runtime: one session, `intra_op_num_threads` = the cores this process may
    use (as torch's threads are set), shared by every request; the tokenizers library for the tokens."""

    task = "text-classification"

    def __init__(self, folder: Path, info: dict, runtime: str = "onnx", *, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        problem = _export_problem(folder, info, runtime)
        if problem:
            raise OnnxError(problem)
        self.folder, self.info, self.runtime = folder, info, runtime
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _cores()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / info["onnx"]["files"][runtime]), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.cutter = Tokenizer.from_file(str(folder / "tokenizer.json"))  # a second one: truncation is its state
        self.cutter.no_padding()
        self.cutter.enable_truncation(self.max_length, strategy="longest_first")
        config = json.loads((folder / SUBDIR / "config.json").read_text())  # the exported (merged) model's
        self.config = SimpleNamespace(**config)  # what the server's checks read (max_position_embeddings)
        id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(config.get("num_labels", 2))}
        self._labels = [str(id2label[str(i)]) for i in range(len(id2label))]
        self.pad_id = config.get("pad_token_id") or 0

    @property
    def labels(self) -> list[str]:
        return self._labels

    @property
    def max_length(self) -> int:
        return int(self.info.get("max_length") or 512)

    def _encode(self, texts: list[str], pairs: list[str] | None) -> tuple[list[dict[str, list[int]]], list[bool]]:
        batch = list(zip(texts, pairs)) if pairs else texts
        full = self.tokenizer.encode_batch(batch)
        cut = [len(e.ids) > self.max_length for e in full]
        long = [i for i, was_cut in enumerate(cut) if was_cut]
        if long:  # only those again, cut as transformers' tokenizer cuts them (longest_first for pairs)
            for i, e in zip(long, self.cutter.encode_batch([batch[i] for i in long])):
                full[i] = e
        rows = [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids} for e in full]
        return rows, cut

    def _logits(self, rows: list[dict[str, list[int]]]) -> np.ndarray:
        longest = max(len(r["input_ids"]) for r in rows)
        feed = {}
        for name in self.inputs:
            pad = self.pad_id if name == "input_ids" else 0
            feed[name] = np.array([r[name] + [pad] * (longest - len(r[name])) for r in rows], dtype=np.int64)
        return self.session.run(None, feed)[0].astype(np.float64)


def load(folder: str | Path, runtime: str | None = None, *, device: str | None = None, base_model: str | None = None):
    """The predictor `workbook serve` / `predict` use: on the runtime asked for, else ONNX when the folder has a fresh
    export, else torch (`hp.inference.load`); its `runtime` and `runtime_why` say which and why. ONNX Runtime here is
    its CPU build; torch is imported only when torch runs the model (the ONNX serving image has none)."""
    where = model_folder(folder)
    info = read_workbook_json(where) or {}
    chosen, why = choose_runtime(where, info, runtime)
    if chosen == "torch":
        from helpers import inference

        predictor = inference.load(folder, device=device, base_model=base_model)
        predictor.runtime = "torch"  # a summarizer too
    elif device not in (None, "cpu"):
        raise OnnxError(f"--runtime {chosen} runs on the CPU (ONNX Runtime's CPU build); for --device {device} use "
                        "--runtime torch")
    else:
        predictor = OnnxClassifier(where, info, chosen)
    predictor.runtime_why = why
    return predictor


# --------------------------------------------------------------------------- export (torch: the lab's side)

def export(path: str | Path, *, quantize: str | None = None, texts: list | None = None,
           labels: list[str] | None = None) -> dict[str, Any]:
    """Export a saved classifier to ONNX (and int8 with `quantize="int8"`), check it against torch on `texts` (real
    rows: the run's validation data, or a file the user gives), record it in workbook.json; returns the report."""
    from helpers import inference

    if quantize not in (None, "int8"):
        raise OnnxError(f"--quantize {quantize!r}: int8 is the one quantization offered")
    folder = inference._model_folder(path)
    info = inference._read_info(folder)
    task = info.get("task", "text-classification")
    if task != "text-classification":
        raise OnnxError(f"{folder} holds a {task} model: only classifiers (notebooks 01-03) are exported to ONNX; "
                        "generation stays on torch (docs/container.md): serve it with --runtime torch")
    clf = inference.load(folder, device="cpu")
    model = clf.model.merge_and_unload() if hasattr(clf.model, "merge_and_unload") else clf.model  # LoRA: merged
    texts = list(texts or [])
    if not texts:
        raise OnnxError("no rows to check the export on; give --data FILE (the validation split, say)")
    out_dir = folder / SUBDIR
    out_dir.mkdir(exist_ok=True)
    files = {"onnx": f"{SUBDIR}/{FILES['onnx']}"}
    _export_fp32(model.eval(), clf.tokenizer, folder / files["onnx"], info)
    model.config.to_json_file(str(out_dir / "config.json"))  # labels and sizes of what was exported (LoRA: merged)
    record = {"files": files, "weights_sha256": weights_digest(folder),
              "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "versions": _versions()}
    candidate = {**info, "onnx": record}
    reference = clf.predict(texts)
    fp32 = _compare(OnnxClassifier(folder, candidate, "onnx").predict(texts), reference, labels)
    if not (fp32["labels_equal"] == 1.0 and fp32["max_probability_diff"] <= _FP32_TOLERANCE):
        (folder / files["onnx"]).unlink(missing_ok=True)
        raise OnnxError(f"the ONNX export of {folder} does not answer as torch does on {len(texts)} rows (labels equal "
                        f"{fp32['labels_equal']:.1%}, probabilities up to {fp32['max_probability_diff']:.1e} apart): "
                        "it was not kept; serve this model with --runtime torch")
    report = {"folder": str(folder), "rows": len(texts), "fp32": fp32}
    if quantize == "int8":
        files["onnx-int8"] = f"{SUBDIR}/{FILES['onnx-int8']}"
        _quantize(folder / files["onnx"], folder / files["onnx-int8"])
        report["int8"] = _compare(OnnxClassifier(folder, candidate, "onnx-int8").predict(texts), reference, labels)
    record["check"] = {k: v for k, v in report.items() if k != "folder"}
    from helpers.artifacts import _write_json

    _write_json(folder / WORKBOOK_FILE, {**info, "onnx": record})  # what `--runtime onnx` reads
    return report


def _export_fp32(model, tokenizer, target: Path, info: dict) -> None:
    import torch

    example = tokenizer(["a first example text", "a second, longer example text with more words"],
                        ["a pair's other text", "its second text"] if info.get("text_pair") else None,
                        padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    tmp = target.with_name(target.name + ".partial")
    try:
        torch.onnx.export(model, (), str(tmp), kwargs={n: example[n] for n in names}, dynamo=True,
                          input_names=names, output_names=["logits"], external_data=False, verbose=False,
                          dynamic_shapes={n: {0: batch, 1: sequence} for n in names})
    except Exception as err:  # noqa: BLE001 - an architecture the exporter cannot take: one line
        tmp.unlink(missing_ok=True)
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise OnnxError(f"this model ({kind}) could not be exported to ONNX ({str(err).splitlines()[0][:160]}); serve "
                        "it with --runtime torch") from None
    os.replace(tmp, target)


def _quantize(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization: weights stored in int8, activations quantized per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_name(target.name + ".partial")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    os.replace(tmp, target)


def _compare(got: list[dict], reference: list[dict], labels: list[str] | None) -> dict[str, Any]:
    """Agreement with torch's answers (and accuracy against `labels`, with torch's beside it)."""
    same = [g["label"] == r["label"] for g, r in zip(got, reference)]
    gap = max(abs(g["probabilities"][k] - v) for g, r in zip(got, reference) for k, v in r["probabilities"].items())
    out = {"labels_equal": round(sum(same) / len(same), 4), "max_probability_diff": float(gap)}
    if labels:
        out["accuracy"] = round(float(np.mean([g["label"] == t for g, t in zip(got, labels)])), 4)
        out["torch_accuracy"] = round(float(np.mean([r["label"] == t for r, t in zip(reference, labels)])), 4)
    return out


def _versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("torch", "onnx", "onnxruntime", "onnxscript")
            if _installed(name)}


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True
