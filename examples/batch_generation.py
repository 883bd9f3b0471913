"""Several prompts at once: one onnxruntime call per decode step for all of them.

    python examples/batch_generation.py MODEL.onnx
"""
import sys

from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.generate import generate_batch

model = MixerModel(sys.argv[1])
prompts = ["Once upon a time", "Lily and Ben went to the park.", "The little dog was sad because"]
texts = generate_batch(model, prompts, GenerateOptions.of(max_new_tokens=160, temperature=0.7, seed=0))
for prompt, text in zip(prompts, texts):
    print(f"--- {prompt}{text}\n")
