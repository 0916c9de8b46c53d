"""Is the Hugging Face Hub reachable? Decided once per process, then offline mode is set.

A failing Hub call in transformers/datasets retries for 25-50 s, so instead of letting every
`from_pretrained` find out on its own, we make one short probe and, when the Hub is out of reach,
switch the libraries into offline mode: cached files still load, nothing waits on the network.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

_TRUE = {"1", "true", "yes", "on"}
_state: dict[str, bool] = {}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _probe(timeout: float) -> bool:
    """One HEAD request; any HTTP answer (even 401) means the Hub is there."""
    request = urllib.request.Request(hub_endpoint() + "/api/whoami-v2", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - fixed https URL
        return True
    except urllib.error.HTTPError:
        return True
    except (TimeoutError, urllib.error.URLError, OSError, ValueError):
        return False


def set_offline_mode() -> None:
    """Put huggingface_hub, transformers and datasets into offline mode for this process.

    The libraries read the environment at import time, so the module-level flags of those already
    imported are updated too.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    hf_constants = sys.modules.get("huggingface_hub.constants")
    if hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        ds_config.HF_HUB_OFFLINE = True
        ds_config.HF_DATASETS_OFFLINE = True


def hub_available(timeout: float = 3.0) -> bool:
    """True when the Hub answers. Probes once per process; offline mode is set when it does not.

    `HF_HUB_OFFLINE=1` (or `WORKBOOK_OFFLINE=1`) skips the probe: the user already said "offline".
    """
    if "available" not in _state:
        if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or _env_true("WORKBOOK_OFFLINE"):
            available = False
        else:
            available = _probe(timeout)
        if not available:
            set_offline_mode()
        _state["available"] = available
    return _state["available"]


def _reset_for_tests() -> None:
    _state.clear()


def announce(title: str, lines: list[str]) -> None:
    """A notice that stands out: a styled banner in JupyterLab (with the same words as plain text for
    headless runs and logs), a plain block elsewhere. Used for stand-ins and fallbacks."""
    import html

    plain = "\n".join([f"** {title} **", *(f"   {line}" for line in lines)])
    shell = _ipython_kernel()
    if shell is None:
        print(plain, flush=True)
        return
    from IPython.display import display

    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    banner = ('<div style="border-left:4px solid #d97706;background:#fff7e6;color:#3d2a00;padding:8px 12px;'
              'margin:6px 0;border-radius:4px;font-family:system-ui,sans-serif">'
              f'<strong>{html.escape(title.capitalize())}</strong><ul style="margin:4px 0 0 0">{items}</ul></div>')
    display({"text/plain": plain, "text/html": banner}, raw=True)


def _ipython_kernel():
    """The running Jupyter kernel's shell, or None (a script, a terminal IPython, a test)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell if shell is not None and type(shell).__name__ == "ZMQInteractiveShell" else None
