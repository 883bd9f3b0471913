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
    try:
        return Path(hf_hub_download(repo_id, HUB_FILENAME, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        raise CheckpointError(f"cannot fetch {repo_id}/{HUB_FILENAME}: not cached and the hub is "
                              f"unreachable or offline ({_first_line(e)})") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot fetch {repo_id}/{HUB_FILENAME}: {_first_line(e)}") from None


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
