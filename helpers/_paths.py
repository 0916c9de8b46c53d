"""Where things live, with no imports from the kit (so every module can use it without a cycle)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples"
RUNS_DIR = PROJECT_ROOT / "runs"
# The self-contained score.py copied into every saved model folder. It belongs to the tool (`workbook`), which
# also serves and tests it; the kit only copies the file (reads it, never imports it).
SCORE_TEMPLATE = Path(__file__).resolve().parent.parent / "workbook" / "score_template.py"
