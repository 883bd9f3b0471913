"""Several prompts at once: one onnxruntime call per decode step for all of them; each row is
what it would be alone (its own sampler, seeded with the same seed).

    python examples/batch_generation.py MODEL.onnx
"""
import sys

from micromixer_edge import MixerModel

model = MixerModel(sys.argv[1])
prompts = ["Once upon a time", "Lily and Ben went to the park.", "The little dog was sad because"]
for prompt, text in zip(prompts, model.generate_batch(prompts, max_new_tokens=160, temperature=0.7, seed=0)):
    print(f"--- {prompt}{text}\n")
