"""Where weights come from: a checkpoint file, the Hugging Face hub, or the bundled defaults."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from ..errors import CheckpointError
from ..format import DEFAULT_SIZE, HUB_FILENAME, HUB_REPOS, SIZES


def bundled_path(size: str) -> Path | None:
    """The package's own trained weights for a preset, if it ships them."""
    path = Path(str(resources.files("micromixer_edge") / "weights" / f"{size}.pt"))
    return path if path.is_file() else None


def bundled_sizes() -> list[str]:
    return [s for s in SIZES if bundled_path(s)]


def from_hub(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (or reuse from the hub's cache) a published `model.pt`; needs huggingface_hub."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError("--from-hub needs huggingface_hub: pip install 'micromixer-edge[hub]'") from None
    offline = not _hub_reachable()  # (the hub library retries for ~25 s before it says so)
    try:
        return Path(hf_hub_download(repo_id, HUB_FILENAME, cache_dir=cache_dir, local_files_only=offline))
    except LocalEntryNotFoundError as e:
        why = "the hub did not answer (no network, or HF_HUB_OFFLINE=1)" if offline else _first_line(e)
        raise CheckpointError(f"cannot fetch {repo_id}/{HUB_FILENAME}: not cached, and {why}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot fetch {repo_id}/{HUB_FILENAME}: {_first_line(e)}") from None


def _hub_reachable(seconds: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within `seconds` (name lookup included, on a
    thread of its own: getaddrinfo has no timeout). HF_HUB_OFFLINE=1 says no without asking."""
    import socket
    import threading
    from urllib.parse import urlparse
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # through a proxy: only the hub library's own request can tell
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    ok = []

    def probe():
        try:
            socket.create_connection(address, timeout=seconds).close()
            ok.append(True)
        except OSError:
            pass
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(ok)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def resolve(size: str | None, checkpoint: str | None, hub_repo: str | None) -> Path:
    """The checkpoint file to export: explicit file, hub download, or the bundled default."""
    if checkpoint and hub_repo:
        raise CheckpointError("give either --checkpoint or --from-hub, not both")
    if checkpoint:
        return Path(checkpoint)
    if hub_repo:
        return from_hub(hub_repo)
    size = size or DEFAULT_SIZE
    path = bundled_path(size)
    if path is None:
        have = ", ".join(bundled_sizes()) or "none yet"
        raise CheckpointError(f"no bundled weights for {size} (bundled: {have}); pass "
                              f"--checkpoint PATH or --from-hub {HUB_REPOS[size]}")
    return path
