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
    """Print a boxed notice that stands out in notebook output and logs (stand-ins, fallbacks)."""
    width = max(len(title), *(len(line) for line in lines)) + 4
    bar = "!" * width
    print(bar)
    print(f"! {title}")
    for line in lines:
        print(f"!   {line}")
    print(bar, flush=True)
