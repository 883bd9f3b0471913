"""Drive the stateful step graph yourself, with nothing but onnxruntime and numpy.

The file's metadata says everything: sizes, special ids. Fold the prompt in with one call, then
feed one byte at a time, carrying `state` and `position`. Greedy decoding, 200 bytes.

    python examples/custom_loop.py MODEL.onnx "Once upon a time"
"""
import json
import sys

import numpy as np
import onnxruntime as ort

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = json.loads(session.get_modelmeta().custom_metadata_map["micromixer"])
prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"

ids = np.array([[meta["bos_id"], *prompt.encode("utf-8")]], dtype=np.int64)  # (1, T)
state = np.zeros((meta["num_layers"], 1, meta["hidden_dim"]), dtype=np.float32)
position = np.zeros(1, dtype=np.int64)
out = bytearray()
for _ in range(200):
    logits, state = session.run(None, {"input_ids": ids, "position": position, "state": state})
    position += ids.shape[1]
    next_logits = logits[0, -1]
    next_logits[[meta["pad_id"], meta["bos_id"]]] = -np.inf  # never sample these
    token = int(np.argmax(next_logits))
    if token == meta["eos_id"]:
        break
    out.append(token)
    ids = np.array([[token]], dtype=np.int64)  # (1, 1): one new byte per call
    # past max_seq_len the model leaves its training range; mixer-run re-folds recent bytes then
    if position[0] >= meta["max_seq_len"]:
        break
print(prompt + out.decode("utf-8", errors="replace"))
