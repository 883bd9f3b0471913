// Node's test runner over the web runner (micromixer_edge/pack/web/micromixer.mjs) with
// onnxruntime-node. The truth is Python's: tests/test_web.py writes the cases (Python's
// random.Random draws, Sampler picks, TextStream output, the server's 400 messages, mixer-run's
// bytes) into the file MIXER_WEB_CASES names, then runs `node --test` here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";
import { Twister, Sampler, TextStream, Model, checkOptions, seedValue, readMetadata } from "../../micromixer_edge/pack/web/micromixer.mjs";

const path = process.env.MIXER_WEB_CASES;
if (!path) throw new Error("MIXER_WEB_CASES is not set: run these through pytest tests/test_web.py");
const CASES = JSON.parse(readFileSync(path, "utf8"));
const IDS = { pad: 0, bos: 1, eos: 2 };
const seedOf = (s) => (s === null ? null : BigInt(s));  // seeds travel as strings (past 2**53)

test("the Twister draws Python's random.Random(seed).random() numbers", () => {
  for (const { seed, values } of CASES.twister) {
    const rng = new Twister(seedValue(BigInt(seed)));
    assert.deepEqual(values.map(() => rng.random()), values, `seed ${seed}`);
  }
});

test("the sampler picks Python's bytes (penalties, bias, filters, seeded draws)", () => {
  for (const [i, c] of CASES.sampler.entries()) {
    const s = new Sampler(checkOptions(c.options), seedValue(seedOf(c.seed)), IDS);
    for (const t of c.recent) s.remember(t);
    for (const t of c.generated) s.accepted(t);
    const got = c.steps.map(({ logits }) => {
      const token = s.sample(Float32Array.from(logits));
      s.accepted(token);
      s.remember(token);
      return token;
    });
    assert.deepEqual(got, c.steps.map((step) => step.token), `case ${i}: ${JSON.stringify(c.options)}`);
  }
});

test("the text stream gives Python's text (UTF-8 with replacement, stop strings)", () => {
  for (const c of CASES.text) {
    const stream = new TextStream(c.stops);
    let text = "";
    for (const b of c.bytes) text += stream.push(Uint8Array.of(b));
    text += stream.finish();
    assert.equal(text, c.text, JSON.stringify(c));
    assert.equal(stream.stopped, c.stopped);
  }
});

test("options: the defaults, and the server's 400 message for each value out of bounds", () => {
  for (const c of CASES.options) {
    const options = { ...c.options };
    if (options.seed?.bigint) options.seed = BigInt(options.seed.bigint);
    let error = null;
    try {
      checkOptions(options);
    } catch (e) {
      error = e.message;
    }
    assert.equal(error, c.error, JSON.stringify(c.options));
  }
  assert.deepEqual(Object.fromEntries(Object.entries(checkOptions({})).filter(([k]) => k in CASES.defaults)), CASES.defaults);
});

test("metadata is read from the model file", () => {
  for (const [kind, file] of Object.entries(CASES.models)) {
    assert.equal(readMetadata(new Uint8Array(readFileSync(file))).max_seq_len, CASES.max_seq_len, kind);
  }
  assert.throws(() => readMetadata(new Uint8Array([8, 1])), /no micromixer metadata/);
});

test("generation gives mixer-run's bytes (float, portable, int8; greedy and seeded)", async (t) => {
  const models = {};
  for (const [kind, file] of Object.entries(CASES.models)) models[kind] = await Model.load(ort, new Uint8Array(readFileSync(file)));
  let ties = 0;
  for (const [i, c] of CASES.generate.entries()) {
    const options = { ...c.options, seed: seedOf(c.options.seed ?? null) };
    const pieces = [];
    const r = await models[c.model].generate(options, (p) => pieces.push(p));
    assert.equal(pieces.join(""), r.text);
    if (r.text === c.text && r.finish_reason === c.finish_reason) continue;
    // a greedy row may part where two bytes' logits tie within float rounding: counted, not hidden
    const at = r.tokens.findIndex((tok, j) => tok !== c.tokens[j]);
    const margin = c.margins?.[at < 0 ? r.tokens.length : at];
    assert.ok(margin !== undefined && margin < CASES.tie, `case ${i} (${c.model}, ${JSON.stringify(c.options.prompt)}): `
      + `differs at byte ${at} (Python's margin ${margin}): ${JSON.stringify(r.text.slice(0, 80))} vs ${JSON.stringify(c.text.slice(0, 80))}`);
    ties++;
    t.diagnostic(`case ${i}: a near-tie at byte ${at} (margin ${margin})`);
  }
  t.diagnostic(`near-ties: ${ties} of ${CASES.generate.length} generations`);
});
