"""Model-hub access that fails fast: one TCP probe instead of huggingface_hub's retries.

Light on purpose (huggingface_hub only, no torch or transformers), so the entry points' config checks
(:mod:`src.jobs.cli`) can ask before anything heavy is imported; :func:`src.backbones.hf.load_hf_config`
asks again before its first hub request (a no-op once answered in this process).
"""

from __future__ import annotations

from pathlib import Path


class HubError(ValueError):
    """The model hub cannot be reached and the model is not in the local hub cache; the message says what to do."""


def is_hub_id(model_id) -> bool:
    """``name`` or ``org/name`` that is not an existing path nor an embedded model (``embedded:tiny.en``)."""
    m = str(model_id)
    if not m or m.startswith(("embedded:", "/", ".", "~")) or m.count("/") > 1:
        return False
    return not Path(m).expanduser().exists()


HUB_PROBE_TIMEOUT = 3.0  # seconds to wait for a TCP connection to the hub (or the proxy) before calling it unreachable
_HUB_REACHABLE: dict[str, str | None] = {}  # address -> None (reachable) or why not; one probe per process


def _hub_address() -> tuple[str, str, int]:
    """(what, host, port) the first hub request would connect to: the HTTPS proxy if one is set, else
    ``HF_ENDPOINT`` (huggingface_hub's ``constants.ENDPOINT``)."""
    import os
    from urllib.parse import urlparse

    from huggingface_hub import constants

    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), None)
    url = urlparse(proxy if proxy else constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    return ("proxy " if proxy else "") + (proxy or constants.ENDPOINT), url.hostname or "", port


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """None if a TCP connection to the model hub (or the HTTPS proxy) opens within ``timeout`` seconds, else why
    not (name not resolved, connection refused, timed out).  Probed once per process and address."""
    import socket

    what, host, port = _hub_address()
    key = f"{host}:{port}"
    if key not in _HUB_REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _HUB_REACHABLE[key] = None
        except OSError as e:  # socket.gaierror, ConnectionRefusedError, TimeoutError
            _HUB_REACHABLE[key] = f"{what}: {e.strerror or e.__class__.__name__}"
    return _HUB_REACHABLE[key]


def check_hub_access(model_id: str, revision: str | None = None) -> None:
    """Before the first hub request for the hub id ``model_id``: fail in seconds, once, when the hub cannot be reached.

    huggingface_hub retries an unreachable hub five times with back-off (about 30 s, a warning per retry) before
    falling back to its cache.  Here one TCP probe decides instead (:func:`hub_unreachable_reason`): with the hub
    unreachable, a model already in the local hub cache is used from there (the process switches to
    ``HF_HUB_OFFLINE`` mode, with one warning), and a model that is not raises a HubError saying what to do.
    In offline mode (``HF_HUB_OFFLINE=1``) nothing is probed: a model not in the cache is that HubError at once."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.is_offline_mode():
        if isinstance(try_to_load_from_cache(model_id, "config.json", revision=revision), str):
            return
        why = "HF_HUB_OFFLINE is set"
    else:
        why = hub_unreachable_reason()
        if why is None:
            return
    cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    if isinstance(cached, str):
        import logging

        constants.HF_HUB_OFFLINE = True  # every later hub call of this process reads the cache, none waits
        logging.getLogger("speechinterp").warning(
            "the model hub is unreachable (%s): using %s from the local hub cache (offline from here on)", why, model_id
        )
        return
    raise HubError(
        f"model {model_id!r} is not in the local hub cache ({constants.HF_HUB_CACHE}) and the model hub cannot be "
        f"used ({why}). Download it on a machine with network (`hf download {model_id}`) and copy the hub cache "
        "here (HF_HOME), or give a local directory: from_pretrained(...).save_pretrained(dir), then backbone=local "
        "backbone.model_id=/path/to/dir (HF_HUB_OFFLINE=1: never contact the hub). No network at all: "
        "backbone=whisper_tiny_en (or whisper_base) is embedded."
    )
