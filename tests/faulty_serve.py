"""mixer-serve with faults injected by prompt, for test_serve_robust.py (run as a script):
- a prompt starting "FAIL-PREPARE" fails while its row is prepared (Engine.prefill);
- a row whose seed is 666 fails in its own draw after 20 bytes (Sampler.uniform);
- a row whose seed is 777 fails in its own re-fold (Engine._refold: window mode past W);
- a prompt starting "FAIL-STEP" makes the next shared onnxruntime call fail (the whole step);
- a prompt starting "KILL-LOOP" kills the decode thread itself (a bug outside any row)."""
import sys

from micromixer_edge.runtime import engine, sampling
from micromixer_edge.serve import loop
from micromixer_edge.serve.cli import main

prefill, uniform, feed, step = engine.Engine.prefill, sampling.Sampler.uniform, engine.Engine._feed, loop.DecodeLoop._step
refold = engine.Engine._refold
state = {"fail_step": False}


def faulty_prefill(self, row, prompt):
    if isinstance(prompt, str) and prompt.startswith("FAIL-PREPARE"):
        raise RuntimeError("injected: preparation failed")
    if isinstance(prompt, str) and prompt.startswith("FAIL-STEP"):
        state["fail_step"] = True
    return prefill(self, row, prompt)


def faulty_uniform(self):
    self.draws = getattr(self, "draws", 0) + 1
    if getattr(self, "doomed", False) and self.draws > 20:
        raise RuntimeError("injected: this row's draw failed")
    return uniform(self)


def faulty_feed(self):
    if state.pop("fail_step", False):
        raise RuntimeError("injected: the shared step failed")
    return feed(self)


def faulty_refold(self, row, keep):
    if row.options.seed == 777:
        raise RuntimeError("injected: this row's re-fold failed")
    return refold(self, row, keep)


def faulty_step(self):
    if any(job.prompt.startswith("KILL-LOOP") for job in self._jobs.values()):
        raise SystemError("injected: the decode loop itself failed")
    return step(self)


new_row = engine.Engine.new_row


def doomed_row(self, options, stats=None):
    row = new_row(self, options, stats)
    row.sampler.doomed = options.seed == 666
    return row


engine.Engine.prefill, sampling.Sampler.uniform, engine.Engine._feed = faulty_prefill, faulty_uniform, faulty_feed
engine.Engine.new_row, loop.DecodeLoop._step, engine.Engine._refold = doomed_row, faulty_step, faulty_refold

if __name__ == "__main__":
    sys.argv[0] = "mixer-serve"
    main()
