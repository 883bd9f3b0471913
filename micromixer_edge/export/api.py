"""The export side's entry points, as the CLI and Python users call them."""
from __future__ import annotations

import os

from .._files import check_output_path
from .checkpoint import load_checkpoint
from .onnx_export import DEFAULT_OPSET, ExportResult, export
from .weights import resolve


def export_checkpoint(size: str | None = None, checkpoint: str | os.PathLike | None = None,
                      hub_repo: str | None = None, output: str | os.PathLike | None = None,
                      opset: int = DEFAULT_OPSET, atol: float = 1e-3, validate: bool = True,
                      log=print) -> ExportResult:
    """Load weights (file, hub or bundled), export them to ONNX, validate, and report."""
    source = resolve(size, os.fspath(checkpoint) if checkpoint else None, hub_repo)
    out = check_output_path(output or f"micromixer-{size or 'model'}.onnx", source)
    loaded = load_checkpoint(source, size)
    if output is None and size is None:
        out = check_output_path(f"micromixer-{loaded.size}.onnx", source)
    log(f"loaded {source} ({loaded.size}, {sum(p.numel() for p in loaded.model.parameters()):,} "
        f"parameters, sha256 {loaded.sha256[:12]})")
    result = export(loaded.model, loaded.size, loaded.sha256, out, opset, atol, validate)
    for case, diff in result.diffs.items():
        log(f"  validation {case:>15}: max abs diff {diff:.2e}  (atol {atol:g}) ok")
    log(f"wrote {result.path}: {result.nodes} nodes, {result.bytes / 1e6:.2f} MB, opset {opset}")
    return result
