"""The files a GitHub user expects, read as their tools read them: the workflow runs the README's test command and
builds the serving image; `make lint` is ruff, pinned, inside `make test`; the serving requirements are pinned as
requirements.txt pins them and hold what `pip install --no-index` needs and nothing of the lab; the Dockerfile
serves one model folder on 0.0.0.0:8000 as a non-root user with a HEALTHCHECK."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LAB = {"jupyterlab", "jupyter-server", "notebook", "ipykernel", "ipython", "ipywidgets", "mlflow", "mlflow-skinny",
       "optuna", "papermill", "nbmake", "nbclient", "pytest", "hypothesis", "selenium", "matplotlib", "datasets",
       "scikit-learn", "ruff"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            pins[_canon(name)] = version
    return pins


def _readme_test_command() -> str:
    """The test command of the README's set-up block (`make test   # ...`)."""
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set-up"):]
    block = setup[setup.index("```bash") + 7: setup.index("```", setup.index("```bash") + 7)]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip().startswith("make")]
    test = [c for c in commands if c.split()[:2] == ["make", "test"]]
    assert test, commands
    return test[0]


def _make_rule(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:(?!=)", line):
            recipe = []
            for more in lines[i + 1:]:
                if not more.startswith("\t"):
                    break
                recipe.append(more.strip())
            return line.split(":", 1)[1].split(), recipe
    raise AssertionError(f"no {target} target in the Makefile")


# --------------------------------------------------------------------------- the workflow

@pytest.fixture(scope="module")
def workflow():
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())


def test_workflow_runs_on_push_and_pull_requests(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)


def test_workflow_runs_the_readmes_test_command_and_builds_the_image(workflow):
    command = _readme_test_command()
    assert command == "make test"
    steps = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(re.search(rf"(^|\n|&&\s*){re.escape(command)}(\s|$)", run) for run in steps), steps
    assert any(re.search(r"(^|\n|&&\s*)make docker(\s|$)", run) for run in steps), steps
    for job in workflow["jobs"].values():
        assert job["runs-on"] and any(step.get("uses", "").startswith("actions/checkout@") for step in job["steps"])


# --------------------------------------------------------------------------- lint

def test_make_lint_is_pinned_ruff_with_the_projects_config():
    _, recipe = _make_rule("lint")
    assert any("ruff" in line.lower() and " check" in line for line in recipe), recipe
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^RUFF_VERSION := \d+\.\d+\.\d+$", makefile, re.M)
    assert "ruff==$(RUFF_VERSION)" in makefile
    assert "[tool.ruff]" in (ROOT / "pyproject.toml").read_text()


def test_make_test_runs_lint():
    prerequisites, _ = _make_rule("test")
    assert "lint" in prerequisites, prerequisites


# --------------------------------------------------------------------------- the serving requirements

SERVE_FILES = {"requirements-serve.txt": {"torch", "transformers", "flask", "pandas", "peft", "safetensors",
                                          "tokenizers"},
               "requirements-serve-onnx.txt": {"onnxruntime", "tokenizers", "flask", "numpy"}}


@pytest.mark.parametrize("name", SERVE_FILES)
def test_serving_requirements_are_pinned_as_requirements_txt_and_hold_no_lab(name):
    serve, lab = _pins(ROOT / name), _pins(ROOT / "requirements.txt")
    assert SERVE_FILES[name] <= set(serve)
    if name == "requirements-serve-onnx.txt":  # the ONNX image: none of torch's stack
        assert not set(serve) & {"torch", "transformers", "pandas", "peft", "accelerate", "safetensors"}
    differ = {name: (version, lab.get(name)) for name, version in serve.items()
              if name != "setuptools" and lab.get(name) != version}
    assert not differ, f"pinned otherwise than in requirements.txt: {differ}"
    assert not set(serve) & LAB


@pytest.mark.parametrize("name", SERVE_FILES)
def test_serving_requirements_hold_every_requirement_of_their_packages(name):
    """What `pip install --no-index` of the wheel folder needs: each package's own requirements (Python 3.11 on
    Linux, no extras), read from the installed packages' metadata."""
    serve = _pins(ROOT / name)
    env = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    missing = {}
    for name in serve:
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate(env)) and _canon(req.name) not in serve:
                missing.setdefault(_canon(req.name), []).append(name)
    assert not missing, f"needed by the serving packages but not in {name}: {missing}"


# --------------------------------------------------------------------------- the Dockerfile

def test_dockerfile_serves_one_folder_as_a_non_root_user_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    assert re.search(r"^ARG MODEL_DIR=", text, re.M) and re.search(r"^ARG WHEELS=", text, re.M)
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", final, re.M)
    assert re.search(r'^ENTRYPOINT \["workbook", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"\]', final,
                     re.M)
    assert re.search(r"^EXPOSE 8000$", final, re.M)
    assert re.search(r"^STOPSIGNAL SIGINT$", final, re.M)  # Python as PID 1 ignores SIGTERM
    assert "--no-index --find-links /wheels -r /src/requirements-serve.txt" in text  # the air-gapped path
    assert "requirements.txt" not in text.replace("requirements-serve.txt", "")  # never the lab's set


def test_dockerignore_sends_only_what_the_image_needs():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything out, then what the Dockerfile copies
    assert {"!helpers/", "!pyproject.toml", "!requirements-serve.txt", "!.whl/", "!runs/"} <= set(rules)
    assert "runs/**/checkpoints" in rules and "!.venv/" not in rules and "!.git/" not in rules


def test_make_docker_uses_docker_or_podman_and_the_wheel_folder():
    prerequisites, recipe = _make_rule("docker")
    assert "docker-deps" in prerequisites
    makefile = (ROOT / "Makefile").read_text()
    assert "docker info" in makefile and "command -v podman" in makefile
    assert any("--build-arg WHEELS=$(WHEELS)" in line for line in recipe)
    assert "pip download" in makefile.replace("$(DOCKER_PIP) download", "pip download")
