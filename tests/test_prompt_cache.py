"""The prompt-state cache (issue 22, item 7). The truth is the engine without a cache: with it,
every row's state has the same bits and every sampled byte is the same, in every context mode,
for prompts that share their start, differ after it, repeat exactly, or share nothing; and a
prompt resumes from the longest cached multiple of FOLD_CHUNK it shares (or its own end)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from micromixer_edge.runtime.context import CONTEXT_MODES, FOLD_CHUNK
from micromixer_edge.runtime.prompt_cache import PromptCache


# --- the cache alone (fast) ----------------------------------------------------------------------
@pytest.mark.fast
@settings(max_examples=200, deadline=None)
@given(a=st.binary(max_size=3 * FOLD_CHUNK), b=st.binary(max_size=3 * FOLD_CHUNK))
def test_keys_are_equal_exactly_where_the_prefixes_are(a, b):
    cache = PromptCache(1 << 20)
    (ka, ea), (kb, eb) = cache.keys("halve", list(a)), cache.keys("halve", list(b))
    for n in set(ka) & set(kb):
        assert (ka[n] == kb[n]) == (a[:n] == b[:n])
    assert set(ka) == set(range(FOLD_CHUNK, len(a) + 1, FOLD_CHUNK))
    assert (ea == eb) == (a == b)
    assert ea not in ka.values() and ea not in kb.values()  # an end is never a chunk, whatever its bytes
    chunks, end = cache.keys("unbounded", list(a))
    assert not (set(chunks.values()) | {end}) & (set(ka.values()) | {ea})  # modes never share


@pytest.mark.fast
def test_an_end_key_never_equals_a_chunk_key_of_the_same_bytes():
    """A prompt whose tail, with any tag a key might append, spells another prompt's whole chunk:
    a token-id prompt can hold any bytes, so the two keys must differ by kind, not by content."""
    cache = PromptCache(1 << 20)
    head, chunk = b"x" * FOLD_CHUNK, bytes(range(256)) * 2  # FOLD_CHUNK bytes
    for tag in (b"", b"\xffend", b"\x00", b"end"):
        tail = chunk[:FOLD_CHUNK - len(tag)]
        chunks, _ = cache.keys("unbounded", list(head + tail + tag))
        _, end = cache.keys("unbounded", list(head + tail))
        assert end not in chunks.values()
    assert len(PromptCache(1).keys("halve", list(head + chunk))[0]) == 2


@pytest.mark.fast
def test_the_cache_keeps_within_its_bytes_and_drops_the_least_recent():
    sums, logits = np.zeros((3, 224), np.float32), np.zeros(256, np.float32)
    one = sums.nbytes + logits.nbytes + 200
    cache = PromptCache(3 * one)
    for i in range(3):
        cache.put(bytes([i]), i + 1, sums, i + 1, logits)
    assert cache.longest({1: bytes([0])}, b"none").tokens == 1  # 0 is now the most recent
    cache.put(bytes([3]), 4, sums, 4, logits)
    assert len(cache) == 3 and cache.nbytes <= 3 * one
    assert cache.longest({2: bytes([1])}, b"none") is None  # 1 was the least recently used
    assert cache.longest({1: bytes([0]), 3: bytes([2])}, b"none").tokens == 3  # the longest cached prefix
    assert cache.longest({1: bytes([0])}, bytes([3])).tokens == 4  # the prompt's own end first
    small = PromptCache(one - 1)
    small.put(b"x", 1, sums, 1, logits)
    assert len(small) == 0 and small.nbytes == 0  # one state is over its bound: it keeps none
    assert cache.hits == 3 and cache.misses == 1


# --- the engine with and without it --------------------------------------------------------------
@pytest.fixture(scope="module")
def models(bundled):
    from micromixer_edge.runtime.model import MixerModel
    return {"float": MixerModel(bundled["float"]), "int8": MixerModel(bundled["int8"]), "wide": Wide(bundled["int8"])}


WORDS = ["Once", " upon", " a", " time", ",", " Lily", " saw", " a", " big", " dog", ".", "\n", " café", " 🐶"]
texts = st.lists(st.sampled_from(WORDS), max_size=200).map("".join)
docs = st.lists(st.sampled_from(WORDS), min_size=100, max_size=600).map("".join)  # ~350-2,100 bytes


def _run(engine, prompt, mode, seed):
    from micromixer_edge.runtime.engine import GenerateOptions
    row = engine.new_row(GenerateOptions.of(max_new_tokens=12, seed=seed, temperature=1.0, context=mode))
    engine.prefill(row, prompt)
    state = (row.sums.copy(), row.position, row.logits.copy(), list(row.history))
    engine.join(row)
    text = "".join(p for _, p in engine.run())
    return state, text, row


def _expected_cached(ids: bytes, before: list[bytes], mode: str, W: int) -> int:
    """The documented reach: a prompt seen before, all of it; else the longest multiple of
    FOLD_CHUNK within a prefix shared with an earlier prompt. A bounded mode re-folds a prompt
    longer than W from a suffix of it: such a prompt keeps no states along it, and resumes from
    none (only its exact repeat)."""
    if ids in before:
        return len(ids)
    bounded = mode != "unbounded"
    if bounded and len(ids) > W:
        return 0
    shared = max((next((i for i, (x, y) in enumerate(zip(ids, b)) if x != y), min(len(ids), len(b)))
                  for b in before if not (bounded and len(b) > W)), default=0)
    return shared // FOLD_CHUNK * FOLD_CHUNK


class Wide:
    """The bundled model read with W = 1,100: past 2 x FOLD_CHUNK, so that a bounded mode keeps
    states along its prompts too (the graph takes any position; W is the runtime's)."""
    def __new__(cls, path):
        from micromixer_edge.runtime.model import MixerModel
        return type("WideModel", (MixerModel,), {"max_seq_len": 1100})(path)


@pytest.mark.parametrize("mode", CONTEXT_MODES)
def test_the_cache_changes_no_bit_of_state_and_no_byte(models, mode):
    """A document, then the same document with other endings (and once more the first), each
    with and without the cache: the same state bits, history and text; and each prompt resumes
    from as far as documented."""
    from micromixer_edge.runtime.engine import Engine

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(doc=docs, tails=st.lists(texts, min_size=1, max_size=3), kind=st.sampled_from(["float", "int8", "wide"]),
           seed=st.integers(0, 1000))
    def one(doc, tails, kind, seed):
        model = models[kind]
        cached, plain, before = Engine(model, PromptCache(8 << 20)), Engine(model), []
        for i, prompt in enumerate([doc] + [doc + t for t in tails] + [doc]):
            (s1, p1, l1, h1), t1, row = _run(cached, prompt, mode, seed + i)
            (s2, p2, l2, h2), t2, _ = _run(plain, prompt, mode, seed + i)
            assert np.array_equal(s1, s2) and p1 == p2 and np.array_equal(l1, l2) and h1 == h2
            assert t1 == t2
            ids = b"\x01" + prompt.encode()
            assert row.stats.prompt_tokens == len(ids)
            assert row.stats.cached_tokens == _expected_cached(ids, before, mode, model.max_seq_len)
            before.append(ids)
    one()


def test_a_shared_document_resumes_from_its_last_chunk_and_a_repeat_from_its_end(models):
    from micromixer_edge.runtime.engine import Engine
    doc = "One day, a little girl named Lily went to the park. " * 60  # 3,120 bytes
    engine = Engine(models["int8"], PromptCache(8 << 20))
    first = _run(engine, doc + "Who went?", "unbounded", 1)[2]
    assert first.stats.cached_tokens == 0
    other = _run(engine, doc + "What did she see?", "unbounded", 1)[2]
    assert other.stats.cached_tokens == (len(doc) + 1) // FOLD_CHUNK * FOLD_CHUNK  # the last multiple within the doc
    again = _run(engine, doc + "What did she see?", "unbounded", 1)[2]
    assert again.stats.cached_tokens == len(doc) + len("What did she see?") + 1  # all of it
    halve = _run(engine, doc + "What did she see?", "halve", 1)[2]
    assert halve.stats.cached_tokens == 0  # a mode's states are its own


# --- through the server -------------------------------------------------------------------------
def test_the_server_reports_cached_tokens_and_gives_the_same_bytes_without_its_cache(bundled):
    pytest.importorskip("openai")
    pytest.importorskip("starlette")
    from serving import Served
    doc = "Tom had a red ball. He liked to throw it high in the sky. " * 30  # 1,740 bytes
    questions = ["What did Tom have?", "Where did the ball go?", "What did Tom have?"]
    answers = {}
    for flags in ([], ["--prompt-cache-mb", "0"]):
        s = Served(bundled["int8"], *flags)
        try:
            for i, q in enumerate(questions):
                done = s.client.completions.create(model="m", prompt=doc + q, max_tokens=40, seed=i,
                                                   extra_body={"context": "unbounded"})
                answers.setdefault(i, []).append((done.choices[0].text, done.usage.prompt_tokens_details.cached_tokens))
        finally:
            assert s.stop() == 0
    ids = len(doc + questions[0]) + 1
    assert [a[0][1] for a in answers.values()] == [0, (len(doc) + 1) // FOLD_CHUNK * FOLD_CHUNK, ids]
    assert all(a[1][1] == 0 for a in answers.values())  # --prompt-cache-mb 0: off
    assert all(a[0][0] == a[1][0] for a in answers.values())


@pytest.mark.parametrize("mode", ["halve", "window"])
def test_a_bounded_mode_resumes_only_prompts_it_folds_whole(models, mode):
    """W = 1,100: a 1,000-byte document keeps states at 512 (and its end); the document plus 50
    bytes resumes from 512; plus 300 bytes it is past W, re-folds from its own suffix, and
    resumes from nothing. Each state as without the cache."""
    from micromixer_edge.runtime.engine import Engine
    doc = ("Lily had a little cat. " * 50)[:999]
    cached, plain = Engine(models["wide"], PromptCache(8 << 20)), Engine(models["wide"])
    for prompt, want in ((doc, 0), (doc + "x" * 50, FOLD_CHUNK), (doc + "y" * 300, 0), (doc + "y" * 300, 1300)):
        (s1, p1, l1, h1), t1, row = _run(cached, prompt, mode, 3)
        (s2, p2, l2, h2), t2, _ = _run(plain, prompt, mode, 3)
        assert np.array_equal(s1, s2) and (p1, h1, t1) == (p2, h2, t2) and np.array_equal(l1, l2)
        assert row.stats.cached_tokens == want
