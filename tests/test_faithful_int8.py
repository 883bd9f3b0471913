"""The default int8 (and every invariant scheme) on the bundled 1m weights: a row's logits do not
depend on its batch neighbours or on how its sequence is cut into calls; it stays near-lossless
and small. The truth each test holds a scheme to: the same model run another way (alone, in one
call, byte by byte), and the float export."""
import json
import math
import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import DATA
from micromixer_edge import format as fmt
from micromixer_edge.quantize.report import compare_on_text, invariance
from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.codec import read_stories
from micromixer_edge.runtime.generate import generate, generate_batch

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
INVARIANT = ("float", "int8", "portable", "int8-block")  # dynamic is batch- and chunk-dependent by design
EXACT = 1e-4


@pytest.fixture(scope="module")
def models(bundled):
    return {kind: MixerModel(bundled[kind]) for kind in INVARIANT}


@pytest.mark.parametrize("kind", INVARIANT)
@SETTINGS
@given(ids=st.lists(st.integers(0, 255), min_size=1, max_size=80), cuts=st.lists(st.integers(1, 79), max_size=6))
def test_one_call_chunks_and_steps_agree(models, kind, ids, cuts):
    model, ids = models[kind], np.array(ids)
    whole, s_whole = model.prefill(ids)
    bounds = sorted({c for c in cuts if c < len(ids)}) + [len(ids)]
    state, parts, start = model.new_state(), [], 0
    for end in bounds:
        logits, state = model.prefill(ids[start:end], state)
        parts.append(logits[0])
        start = end
    np.testing.assert_allclose(np.concatenate(parts), whole[0], atol=EXACT, rtol=0)
    step_state, rows = model.new_state(), []
    for t in ids:
        logits, step_state = model.step([t], step_state)
        rows.append(logits[0])
    np.testing.assert_allclose(np.stack(rows), whole[0], atol=EXACT, rtol=0)
    np.testing.assert_allclose(state.sums, s_whole.sums, atol=EXACT, rtol=0)


@pytest.mark.parametrize("kind", INVARIANT)
@SETTINGS
@given(positions=st.lists(st.integers(0, 600), min_size=2, max_size=6), length=st.integers(1, 24),
       seed=st.integers(0, 2**16))
def test_a_batch_row_equals_the_row_alone(models, kind, positions, length, seed):
    """Rows of random bytes, at random positions, with random running sums."""
    model, rng = models[kind], np.random.default_rng(seed)
    ids = rng.integers(3, 256, (len(positions), length))
    state = model.new_state(len(positions))
    state.position[:] = positions
    state.sums[:] = rng.normal(scale=3, size=state.sums.shape).astype(np.float32)
    together, _ = model.prefill(ids, state)
    for i in range(len(positions)):
        alone, _ = model.prefill(ids[i:i + 1], state.rows([i]))
        np.testing.assert_allclose(together[i], alone[0], atol=EXACT, rtol=0)


PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named",
           "Tom had a big red", "The sun was", "Mom said,", "In the park there was a tall tree"]


@pytest.mark.parametrize("kind", INVARIANT)
def test_generate_batch_equals_generate(models, kind):
    options = GenerateOptions.of(max_new_tokens=150, temperature=0)
    batch = generate_batch(models[kind], PROMPTS, options)
    assert batch == [generate(models[kind], p, options) for p in PROMPTS]


def test_the_report_sees_what_dynamic_does(models, bundled):
    """The report's invariance line: zero for the invariant schemes, clearly not for dynamic."""
    for kind in INVARIANT:
        assert invariance(models[kind]) == (0.0, 0.0), kind
    batch, chunk = invariance(MixerModel(bundled["dynamic"]))
    assert batch > 0.01 and chunk > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8", "portable", "int8-block"])
def test_near_lossless_on_all_held_out_stories(models, kind):
    nf, nq, kl, hits, count = compare_on_text(models["float"], models[kind], read_stories(DATA / "valid.txt"))
    change = nq / nf - 1
    print(f"{kind}: bits/byte {nf / count / math.log(2):.4f} -> {nq / count / math.log(2):.4f} "
          f"({change:+.2%}), KL {kl / count:.5f}, top-1 {hits / count:.2%} over {count} positions")
    assert change <= 0.002 and kl / count <= 0.001 and hits / count >= 0.98


def _drift(float_model, q_model) -> tuple[float, float]:
    """(mean KL of q from float, largest logit difference) over 8 prompts in one prefill each."""
    kls, worst = [], 0.0
    for prompt in PROMPTS:
        ids = np.array([1, *prompt.encode()])
        f, q = float_model.prefill(ids)[0][0].astype(np.float64), q_model.prefill(ids)[0][0].astype(np.float64)
        lf, lq = (x - x.max(-1, keepdims=True) for x in (f, q))
        lf, lq = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (lf, lq))
        kls.append((np.exp(lf) * (lf - lq)).sum(-1).mean())
        worst = max(worst, float(np.abs(f - q).max()))
    return float(np.mean(kls)), worst


def test_int8_tracks_float_and_the_check_would_catch_a_scaled_bias(models, bundled, tmp_path):
    """onnxruntime once fused MatMulInteger -> Cast -> Mul -> Add into one op that multiplied the
    bias by the row's scale, silently. The same check that passes the int8 file fails a copy in
    which every bias is multiplied by its row's scale."""
    kl, worst = _drift(models["float"], models["int8"])
    assert kl < 0.002 and worst < 2.0, (kl, worst)
    broken = onnx.load(str(bundled["int8"]))
    producer = {o: n for n in broken.graph.node for o in n.output}
    inits = {t.name for t in broken.graph.initializer}
    for node in list(broken.graph.node):
        if node.op_type != "Add" or node.input[0] not in producer or node.input[1] not in inits:
            continue
        mm = producer[node.input[0]]
        if mm.op_type == "MatMulIntegerToFloat":
            scaled = node.input[1] + "_by_row"
            broken.graph.node.insert(list(broken.graph.node).index(node),
                                     onnx.helper.make_node("Mul", [node.input[1], mm.input[2]], [scaled]))
            node.input[1] = scaled
    onnx.save(broken, tmp_path / "broken.onnx")
    kl_b, worst_b = _drift(models["float"], MixerModel(tmp_path / "broken.onnx"))
    assert kl_b >= 0.002 or worst_b >= 2.0, (kl_b, worst_b)


def test_int8_weights_stay_int8_in_onnxruntimes_memory(bundled, tmp_path):
    """The graph onnxruntime runs after its optimizations (dumped): every integer MatMul reads an
    int8 weight, and the float tensors left are the two tables and the three hyper-in weights
    (the portable scheme's weights, by contrast, are float once loaded)."""
    import onnxruntime as ort
    sizes = {}
    for kind in ("int8", "portable"):
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"{kind}-optimized.onnx")
        ort.InferenceSession(str(bundled[kind]), opts, providers=["CPUExecutionProvider"])
        g = onnx.load(opts.optimized_model_filepath).graph
        types = {t.name: t.data_type for t in g.initializer}
        assert all(types[n.input[1]] == onnx.TensorProto.INT8 for n in g.node if n.op_type == "MatMulIntegerToFloat")
        sizes[kind] = sum(4 * int(np.prod(t.dims)) for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert sizes["int8"] < 1_000_000 < 3_000_000 < sizes["portable"], sizes


SIZE_LIMIT = {"int8": 0.33, "portable": 0.30, "int8-block": 0.30}  # of the float file (int8: int16 tables)


@pytest.mark.parametrize("kind", list(SIZE_LIMIT))
def test_small_with_every_table_quantized(bundled, kind):
    assert bundled[kind].stat().st_size <= SIZE_LIMIT[kind] * bundled["float"].stat().st_size
    q = onnx.load(str(bundled[kind]))
    floats = [tuple(t.dims) for t in q.graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 4096]
    # neither embedding table, nor any weight, is stored in float; but int8's three hyper-in weights
    assert floats == ([(224, 64)] * 3 if kind == "int8" else [])
    assert fmt.parse_metadata({p.key: p.value for p in q.metadata_props})["quantization"] == fmt.QUANT_SCHEMES[kind]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(st.tuples(st.sampled_from(PROMPTS), st.sampled_from(["halve", "window", "unbounded"]),
                                st.integers(0, 2**16), st.integers(200, 320)), min_size=2, max_size=5),
       join_after=st.integers(0, 60))
def test_int8_rows_are_the_same_alone_in_a_batch_and_joining_late_in_every_mode(models, specs, join_after):
    """The default int8 through the engine: rows of every context mode, past W = 256 (re-folds),
    sampled with their own seeds, give the bytes each gives alone, whether all start together or
    some join after `join_after` steps."""
    from micromixer_edge.runtime.engine import Engine
    model = models["int8"]
    opts = [GenerateOptions.of(max_new_tokens=n, seed=seed, context=mode, ignore_eos=True) for _, mode, seed, n in specs]
    alone = [generate(model, p, o) for (p, *_), o in zip(specs, opts)]
    engine = Engine(model)
    first = [engine.add(p, o) for (p, *_), o in zip(specs[:1], opts[:1])]
    out = {r.id: [] for r in first}
    for _ in range(join_after):
        for row in engine.step():
            out[row.id].append(row.take_text())
    late = [engine.add(p, o) for (p, *_), o in zip(specs[1:], opts[1:])]
    out.update({r.id: [] for r in late})
    for row, piece in engine.run():
        out[row.id].append(piece)
    assert ["".join(out[r.id]) for r in first + late] == alone


def test_where_u8s8_would_clip_onnxruntime_runs_exact_u8u8_with_the_same_logits(bundled, tmp_path):
    """On x86 without VNNI, MLAS's U8S8 kernel sums product pairs in a saturating int16; the runtime
    then sets session.x64quantprecision (runtime/cpu.py), and onnxruntime rewrites the int8
    weights to uint8 for its exact U8U8 kernels. Forced on here: the weights are rewritten, and
    the logits are those of the exact int8 kernels of this CPU (VNNI or AMX), bit for bit."""
    import onnxruntime as ort
    from micromixer_edge.runtime.cpu import cpuid_features
    from micromixer_edge.runtime.model import session_options
    if not cpuid_features().get("AVX512VNNI"):
        pytest.skip("the reference needs a CPU whose U8S8 kernel is exact (AVX-512 VNNI)")
    ids = np.array([[1, *b"Once upon a time, there was a little girl named Lily. She"]])
    feeds = {fmt.INPUT_IDS: ids, fmt.POSITION: np.zeros(1, np.int64), fmt.STATE: np.zeros((3, 1, 224), np.float32)}
    out = {}
    for precise in (False, True):
        opts = session_options()
        if precise:
            opts.add_session_config_entry("session.x64quantprecision", "1")
        opts.optimized_model_filepath = str(tmp_path / f"{precise}.onnx")
        out[precise] = ort.InferenceSession(str(bundled["int8"]), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
        g = onnx.load(opts.optimized_model_filepath).graph
        types = {t.name: t.data_type for t in g.initializer}
        want = onnx.TensorProto.UINT8 if precise else onnx.TensorProto.INT8
        assert {types[n.input[1]] for n in g.node if n.op_type == "MatMulIntegerToFloat"} == {want}
    np.testing.assert_array_equal(out[True][0], out[False][0])


HASWELL = """
import json, sys
import numpy as np
from micromixer_edge.runtime.cpu import cpuid_features, x86_u8s8_saturates
from micromixer_edge.runtime.model import MixerModel
f = cpuid_features()
model = MixerModel(sys.argv[1])
ids = np.array([[1, *sys.argv[2].encode()]])
np.save(sys.argv[3], model.prefill(ids)[0])
print(json.dumps({"avx2": f.get("AVX2"), "vnni": f.get("AVX512VNNI"), "exact_kernels": x86_u8s8_saturates()}))
"""


def test_an_avx2_only_cpu_gets_the_exact_kernels_and_the_same_logits(bundled, tmp_path):
    """Under qemu-x86_64 -cpu Haswell (AVX2, no VNNI; qemu-user passes the host's /proc/cpuinfo
    through, VNNI included) the runtime reads CPUID and takes the exact U8U8 kernels: the default
    int8's logits equal this CPU's bit for bit. Read from /proc/cpuinfo (before), it did not, and
    they differed by up to 1.45 (reproduced here by forcing the option off)."""
    import shutil
    import subprocess
    import sys
    from conftest import ROOT
    from micromixer_edge.runtime.cpu import cpuid_features
    if not cpuid_features().get("AVX2"):
        pytest.skip("qemu's Haswell model runs only where the host has AVX2 (TCG emulates the rest)")
    if shutil.which("qemu-x86_64-static") is None:  # (scripts/arm-setup.sh installs qemu-user-static)
        subprocess.run(["bash", str(ROOT / "scripts" / "arm-setup.sh")], check=True, capture_output=True)
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the"
    model = MixerModel(bundled["int8"])
    native = model.prefill(np.array([[1, *prompt.encode()]]))[0]
    proc = subprocess.run(["qemu-x86_64-static", "-cpu", "Haswell", sys.executable, "-c", HASWELL, str(bundled["int8"]),
                           prompt, str(tmp_path / "haswell.npy")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"avx2": True, "vnni": False, "exact_kernels": True}
    emulated = np.load(tmp_path / "haswell.npy")
    print(f"Haswell (emulated) vs this CPU: max |logit diff| {np.abs(emulated - native).max():.3g} over {native.shape[1]} positions")
    np.testing.assert_array_equal(emulated, native)

