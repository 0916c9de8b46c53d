"""Serving on ONNX Runtime (workbook/onnx.py): `workbook export` writes the classifier as ONNX (fp32, int8), checked
against torch; `--runtime` on predict and serve, onnx by default once exported; a stale export is never served;
what cannot be exported says so in one line; the ONNX classifier needs no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers as hp
from workbook import cli, onnx

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "The company will cut 250 jobs .",
         "The annual general meeting will be held in Helsinki on 25 March ."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_classifier_dir):
    """A copy of the tiny classifier with a temperature, exported in fp32 and int8 (the fixture's stays as it is)."""
    folder = tmp_path_factory.mktemp("onnx") / "run" / "model"
    shutil.copytree(tiny_classifier_dir, folder)
    info = json.loads((folder / "workbook.json").read_text())
    (folder / "workbook.json").write_text(json.dumps({**info, "temperature": 1.4}))
    assert cli.main(["export", str(folder.parent), "--quantize", "int8"]) == 0
    return folder


def test_the_export_answers_as_torch_does_and_is_recorded(exported, capsys):
    record = json.loads((exported / "workbook.json").read_text())["onnx"]
    assert record["files"] == {"onnx": "onnx/model.onnx", "onnx-int8": "onnx/model_int8.onnx"}
    assert record["check"]["fp32"]["labels_equal"] == 1.0 and record["check"]["fp32"]["max_probability_diff"] < 1e-4
    assert 0 <= record["check"]["int8"]["labels_equal"] <= 1 and record["weights_sha256"]
    torch_answers = hp.inference.load(exported, device="cpu").predict(TEXTS)
    for runtime in ("onnx", "onnx-int8"):
        answers = onnx.load(exported, runtime).predict(TEXTS)
        gap = max(abs(a["probabilities"][k] - v) for a, t in zip(answers, torch_answers)
                  for k, v in t["probabilities"].items())
        assert gap < (1e-4 if runtime == "onnx" else 0.1), runtime  # the same temperature, the same tokens
        if runtime == "onnx":
            assert [a["label"] for a in answers] == [t["label"] for t in torch_answers]
    chosen = onnx.load(exported)  # the default once exported
    assert (chosen.runtime, chosen.runtime_why) == ("onnx", "the folder has an ONNX export")
    assert cli.main(["predict", str(exported), "--json", *TEXTS]) == 0
    out = capsys.readouterr()
    assert "runtime: onnx" in out.err
    assert [r["label"] for r in json.loads(out.out)] == [t["label"] for t in torch_answers]


def test_the_server_runs_the_export_and_says_so(exported):
    from workbook import serve

    app = serve.create_app(exported, runtime="onnx-int8")
    client = app.test_client()
    health = client.get("/health", headers={"Host": "127.0.0.1"}).get_json()
    assert health["runtime"] == "onnx-int8" and health["temperature"] == 1.4
    answer = client.post("/predict", json={"texts": TEXTS}, headers={"Host": "127.0.0.1"}).get_json()
    assert len(answer["predictions"]) == 3 and answer["predictions"][0]["label"] in health["labels"]


def test_a_stale_export_is_detected_and_never_served(exported, tmp_path, capsys):
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    weights = stale / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # the weights changed after the export
    with pytest.raises(onnx.OnnxError, match="stale: the weights changed after it was made.*workbook export"):
        onnx.load(stale, "onnx")
    assert cli.main(["predict", str(stale), "--runtime", "onnx", "profit rose"]) == 2
    assert "is stale" in capsys.readouterr().err


def test_what_cannot_be_served_or_exported_gets_one_line(tiny_classifier_dir, t5_dir, tmp_path, capsys):
    with pytest.raises(onnx.OnnxError, match=r"has no onnx export; make one with: workbook export .*--runtime torch"):
        onnx.load(tiny_classifier_dir, "onnx")
    with pytest.raises(onnx.OnnxError, match=r"has no onnx-int8 export; make one with: workbook export .* --quantize"):
        onnx.load(tiny_classifier_dir, "onnx-int8")
    assert onnx.load(tiny_classifier_dir).runtime == "torch"  # no export: torch, as before
    assert cli.main(["export", str(t5_dir)]) == 2
    assert "only classifiers (notebooks 01-03) are exported" in capsys.readouterr().err
    empty = tmp_path / "no-weights"
    shutil.copytree(tiny_classifier_dir, empty)
    (empty / "model.safetensors").unlink()
    assert cli.main(["export", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err


def test_the_onnx_classifier_needs_no_torch(exported):
    """As in the serving image for ONNX folders: torch and transformers cannot be imported, the answers still come."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers', 'accelerate', 'peft'):\n"
            "            raise ImportError(f'{name} is not in this image')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from workbook import onnx\n"
            f"print(onnx.load({str(exported)!r}).predict('profit rose')['label'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in ("negative", "neutral", "positive", "LABEL_0", "LABEL_1", "LABEL_2")


def test_score_py_runs_the_export_or_torch(exported):
    def score(runtime: str) -> dict:
        env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **({"WORKBOOK_RUNTIME": runtime} if runtime else {})}
        proc = subprocess.run([sys.executable, str(exported / "score.py"), TEXTS[0]], capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)["prediction"][0]

    on_onnx, on_torch = score(""), score("torch")  # the default: the folder's fresh export
    expected = onnx.load(exported, "onnx").predict(TEXTS[0])
    assert on_onnx["label"] == expected["label"] == on_torch["label"]
    assert on_onnx["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    assert on_torch["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)


def test_a_sentence_pair_classifier_exports_and_answers_pairs_as_torch_does(tiny_classifier_dir, tmp_path):
    folder = tmp_path / "pairs"
    shutil.copytree(tiny_classifier_dir, folder)
    info = json.loads((folder / "workbook.json").read_text())
    (folder / "workbook.json").write_text(json.dumps({**info, "text_pair": True}))
    pairs = [("A man is eating.", "Someone eats food."), ("The sky is blue today, very blue.", "It rains hard.")] * 4
    assert onnx.export(folder, texts=pairs)["fp32"]["labels_equal"] == 1.0
    answers, expected = onnx.load(folder).predict(pairs[:2]), hp.inference.load(folder, device="cpu").predict(pairs[:2])
    for got, want in zip(answers, expected):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
