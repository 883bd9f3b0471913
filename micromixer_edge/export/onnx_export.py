"""MicroMixerV2 -> one self-contained stateful ONNX step graph (see the ONNX contract)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from pathlib import Path

import onnx
import onnxscript.optimizer
import torch

from ..errors import ValidationError
from .. import format as fmt
from .model import MicroMixerV2
from ..onnx_io import strip_debug_info, write_model
from .validate import validate

from ..format import DEFAULT_OPSET
# Fold constant subgraphs up to this many elements, so that the tied head's transpose of the
# embedding is done once at export instead of on every call.
FOLD_LIMIT = 1 << 22


class StepGraph(torch.nn.Module):
    """The contract's function: (input_ids, position, state) -> (logits, state_out)."""

    def __init__(self, model: MicroMixerV2):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position, state):
        return self.model.step(input_ids, position, state)


def example_inputs(cfg: fmt.MixerConfig) -> tuple[torch.Tensor, ...]:
    # batch 2 and seq 3 so that neither dimension is specialised to a constant 1
    ids = torch.tensor([[fmt.BOS_ID, 72, 105], [111, 110, 99]])
    return ids, torch.tensor([0, 7]), torch.zeros(cfg.num_layers, 2, cfg.hidden_dim)


def to_onnx(model: MicroMixerV2, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace the step graph with the dynamo exporter; batch and seq stay dynamic."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = {fmt.INPUT_IDS: {0: batch, 1: seq}, fmt.POSITION: {0: batch}, fmt.STATE: {1: batch}}
    with _quiet():
        program = torch.onnx.export(
            StepGraph(model.eval()), example_inputs(model.config), dynamo=True, opset_version=opset,
            input_names=list(fmt.INPUT_NAMES), output_names=list(fmt.OUTPUT_NAMES),
            dynamic_shapes=shapes, optimize=True, verbose=False)
        onnxscript.optimizer.optimize(program.model, input_size_limit=FOLD_LIMIT,
                                      output_size_limit=FOLD_LIMIT)
    proto = program.model_proto
    strip_debug_info(proto)
    proto.producer_name = "micromixer-edge"
    return proto


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warnings about unrelated packages; keep the CLI clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@dataclasses.dataclass
class ExportResult:
    path: Path
    nodes: int
    bytes: int
    metadata: dict
    diffs: dict[str, float]  # validation case -> max abs logit difference (empty if skipped)


def export(model: MicroMixerV2, size: str, checkpoint_sha256: str, output: str | os.PathLike,
           opset: int = DEFAULT_OPSET, atol: float = 1e-3, check: bool = True) -> ExportResult:
    """Export, check, validate against PyTorch, and only then move the file into place."""
    proto = to_onnx(model, opset)
    meta = fmt.make_metadata(model.config, checkpoint_sha256)
    meta["size"] = size
    diffs: dict[str, float] = {}

    def against_pytorch(path):
        diffs.update(validate(model, path))
        bad = {k: v for k, v in diffs.items() if not v <= atol}
        if bad:
            raise ValidationError("validation failed: " + ", ".join(
                f"{k} max abs diff {v:.3g} > atol {atol:g}" for k, v in bad.items()))
    meta = write_model(proto, meta, output, against_pytorch if check else None)
    return ExportResult(Path(output), len(proto.graph.node), Path(output).stat().st_size, meta, diffs)


