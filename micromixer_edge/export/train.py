"""Train a MicroMixerV2 preset on a text file of stories separated by blank lines (CPU).

Each story is one sequence `[bos] + utf8(story) + [eos]`, padded with `pad` as the original training
did; a story longer than the window is cut at a random offset (teaching the model to continue from
mid-text, which is what the runner's window and halve context modes feed it).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..format import DEFAULT_SIZE, PAD_ID, SIZES
from ..codec import encode_story, read_stories
from .checkpoint import load_checkpoint, save_checkpoint
from .model import MicroMixerV2

LN2 = math.log(2.0)


@dataclasses.dataclass
class TrainConfig:
    size: str = DEFAULT_SIZE
    steps: int = 1500
    batch_size: int = 32
    seq_len: int | None = None  # tokens per row; default: the preset's max_seq_len
    lr: float = 3e-3
    min_lr_ratio: float = 0.1   # cosine decays to lr * this
    warmup: int = 100
    weight_decay: float = 0.1
    dropout: float = 0.0        # on each residual branch; the data is small, so it overfits
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    eval_stories: int = 200
    threads: int | None = None


def init_weights(model: MicroMixerV2) -> None:
    """Small normal init (std 0.02), as GPT-style models use: the head is tied to the embedding,
    so a unit-variance embedding would start with logits of size ~sqrt(H)."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif p.dim() >= 2:
            torch.nn.init.normal_(p, std=0.02)


def sample_batch(rng: np.random.Generator, seqs: list[np.ndarray], batch: int, seq_len: int) -> torch.Tensor:
    """(batch, seq_len + 1) token rows: a random story each, randomly cut if too long, padded."""
    rows = np.full((batch, seq_len + 1), PAD_ID, dtype=np.int64)
    for r, i in enumerate(rng.integers(len(seqs), size=batch)):
        seq = seqs[i]
        if len(seq) > seq_len + 1:
            start = int(rng.integers(len(seq) - seq_len))
            seq = seq[start:start + seq_len + 1]
        rows[r, :len(seq)] = seq
    return torch.from_numpy(rows)


def loss_nats(model: MicroMixerV2, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token loss in nats over non-pad targets, and how many targets there were."""
    logits = model(rows[:, :-1])  # (B, T, V)
    targets = rows[:, 1:]
    n = int((targets != PAD_ID).sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=PAD_ID)
    return loss, n


@torch.no_grad()
def validation_bpb(model: MicroMixerV2, seqs: list[np.ndarray], seq_len: int) -> float:
    """Bits per byte over the first seq_len + 1 tokens of each story (eos counts as a byte)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), 64):
        chunk = [s[:seq_len + 1] for s in seqs[i:i + 64]]
        rows = torch.full((len(chunk), max(map(len, chunk))), PAD_ID, dtype=torch.long)
        for r, s in enumerate(chunk):
            rows[r, :len(s)] = torch.from_numpy(s)
        loss, n = loss_nats(model, rows)
        total, count = total + float(loss) * n, count + n
    model.train()
    return total / count / LN2


def make_optimizer(model: MicroMixerV2, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95))


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _progress(step: int, cfg: TrainConfig, loss: float, bps: float, extra: str = "") -> None:
    done = int(30 * step / cfg.steps)
    line = (f"\r[{'#' * done}{'.' * (30 - done)}] step {step}/{cfg.steps} loss {loss:.3f} "
            f"({loss / LN2:.3f} bits) {bps / 1e3:.1f}k bytes/s{extra}")
    sys.stderr.write(line if sys.stderr.isatty() else line[1:] + "\n")
    sys.stderr.flush()


def train(cfg: TrainConfig, train_path: str | Path, valid_path: str | Path | None,
          output: str | Path, resume: str | Path | None = None,
          stop_after: int | None = None) -> list[tuple[int, float]]:
    """Train, saving the trainer-format checkpoint to `output` at each evaluation and at the end.

    `stop_after` ends this run after that many steps (the schedule still spans cfg.steps), for
    time-boxed sessions: resume later from `output`. Returns the validation curve [(step, bpb)].
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seq_len = cfg.seq_len or SIZES[cfg.size].max_seq_len
    train_seqs = [encode_story(s) for s in read_stories(train_path)]
    valid_seqs = [encode_story(s) for s in read_stories(valid_path)[:cfg.eval_stories]] if valid_path else []
    torch.manual_seed(cfg.seed)
    model, start, curve = MicroMixerV2(SIZES[cfg.size], cfg.dropout), 0, []
    init_weights(model)
    opt = make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    if resume:
        loaded = load_checkpoint(resume, cfg.size)
        model.load_state_dict(loaded.model.state_dict())
        opt.load_state_dict(loaded.extras["optimizer_state_dict"])
        start, curve = int(loaded.extras["step"]), [tuple(p) for p in loaded.extras.get("curve", [])]
        rng.bit_generator.state = loaded.extras["rng_state"]
        torch.set_rng_state(loaded.extras["torch_rng_state"])
    model.train()

    def save(step):
        save_checkpoint(model, output, epoch=step * cfg.batch_size / len(train_seqs), step=step,
                        optimizer_state_dict=opt.state_dict(), rng_state=rng.bit_generator.state,
                        torch_rng_state=torch.get_rng_state(), curve=[list(p) for p in curve],
                        train_config=dataclasses.asdict(cfg))

    t0, seen = time.perf_counter(), 0
    end = min(cfg.steps, start + stop_after) if stop_after else cfg.steps
    for step in range(start, end):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss, n = loss_nats(model, sample_batch(rng, train_seqs, cfg.batch_size, seq_len))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        seen += n
        extra = ""
        if valid_seqs and ((step + 1) % cfg.eval_every == 0 or step + 1 == end):
            curve.append((step + 1, validation_bpb(model, valid_seqs, seq_len)))
            extra = f" | valid {curve[-1][1]:.3f} bits/byte"
            save(step + 1)
        if extra or step % 10 == 0:
            _progress(step + 1, cfg, loss.item(), seen / (time.perf_counter() - t0), extra)
    save(end)
    return curve
