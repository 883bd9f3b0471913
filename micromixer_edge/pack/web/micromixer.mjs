// micromixer.mjs: MicroMixer's runner in JavaScript, for onnxruntime-web (a page, a worker) and
// onnxruntime-node (run.mjs). It gives the bytes mixer-run gives for the same file, prompt and
// options: the same prompt folding and context modes (runtime/context.py), the same sampler
// (runtime/sampling.py: Python's Mersenne Twister and its arithmetic, in float64), the same UTF-8
// text stream with stop strings (runtime/textstream.py). No DOM and no imports: the caller hands
// in its onnxruntime (`ort`) and the model's bytes.
import { SPEC, DEFAULTS, CONTEXT_MODES, FOLD_CHUNK, MIN_DRAW, TINY_TEMPERATURE } from "./fields.mjs";

export { SPEC, DEFAULTS, CONTEXT_MODES };

// --- Python's random.Random: MT19937, seeded from an integer, random()'s 53-bit doubles ----------
export class Twister {
  constructor(seed) {  // seed: a non-negative BigInt (CPython's init_by_array over its 32-bit words)
    this.mt = new Uint32Array(624);
    const key = [];
    for (let n = BigInt(seed); n > 0n; n >>= 32n) key.push(Number(n & 0xffffffffn));
    this._byArray(key.length ? key : [0]);
  }

  _byArray(key) {
    const mt = this.mt;
    mt[0] = 19650218;
    for (let i = 1; i < 624; i++) mt[i] = Math.imul(1812433253, mt[i - 1] ^ (mt[i - 1] >>> 30)) + i;
    let i = 1, j = 0;
    for (let k = Math.max(624, key.length); k; k--) {
      mt[i] = (mt[i] ^ Math.imul(mt[i - 1] ^ (mt[i - 1] >>> 30), 1664525)) + key[j] + j;
      i++; j++;
      if (i >= 624) { mt[0] = mt[623]; i = 1; }
      if (j >= key.length) j = 0;
    }
    for (let k = 623; k; k--) {
      mt[i] = (mt[i] ^ Math.imul(mt[i - 1] ^ (mt[i - 1] >>> 30), 1566083941)) - i;
      i++;
      if (i >= 624) { mt[0] = mt[623]; i = 1; }
    }
    mt[0] = 0x80000000;
    this.index = 624;
  }

  _next() {  // one tempered 32-bit word
    const mt = this.mt;
    if (this.index >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7fffffff);
        mt[k] = mt[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    return (y ^ (y >>> 18)) >>> 0;
  }

  random() {  // [0, 1) exactly as CPython's random_random
    const a = this._next() >>> 5, b = this._next() >>> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
  }
}

/** The generator's seed as Python's seed_value: the integer modulo 2**64 (a Number or a BigInt);
 * without one, 64 random bits. */
export function seedValue(seed) {
  if (seed === null || seed === undefined) {
    const words = new Uint32Array(2);
    globalThis.crypto.getRandomValues(words);  // (Node 18: run.mjs installs node:crypto's webcrypto there)
    return (BigInt(words[0]) << 32n) | BigInt(words[1]);
  }
  const m = 1n << 64n;
  return ((BigInt(seed) % m) + m) % m;
}

// --- the sampler: runtime/sampling.py's one-row path (`_one`, `Sampler.pick`) ----------------------
function argmax(x) {  // the first largest (numpy's argmax)
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

function bisectLeft(a, v, hi) {
  let lo = 0;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (a[mid] < v) lo = mid + 1; else hi = mid; }
  return lo;
}

function bisectRight(a, v, hi) {
  let lo = 0;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (v < a[mid]) hi = mid; else lo = mid + 1; }
  return lo;
}

export class Sampler {
  /** o: checked options (checkOptions); seed: a BigInt from seedValue. */
  constructor(o, seed, ids) {
    this.o = o;
    this.rng = new Twister(seed);
    this.draws = 0;
    this.banned = [ids.pad, ids.bos, ...(o.ignore_eos ? [ids.eos] : [])];
    this.penalized = o.repetition_penalty !== 1 && o.repeat_last_n > 0;
    this.recent = [];                      // the latest tokens (the window is the last repeat_last_n)
    this.window = new Int32Array(256);     // (V,) counts in the window
    this.counted = Boolean(o.presence_penalty || o.frequency_penalty);
    this.counts = new Map();               // byte -> times generated
    this.penalty = new Float64Array(256);  // (V,) what presence and frequency take off
    this.bias = null;
    // the server's order: (byte, bias) pairs sorted, the last of a byte given twice ("65", "065") wins
    const bias = Object.entries(o.logit_bias).map(([t, b]) => [Number(t), b]).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    if (bias.length) {
      this.bias = new Float64Array(256);
      for (const [t, b] of bias) this.bias[t] = b;
    }
    this.adjusts = this.penalized || this.counted || this.bias !== null;
    this.plainGreedy = o.temperature === 0 && !this.adjusts;
    this.topK = o.top_k || 256;
    this.temperature = o.temperature ? Math.max(o.temperature, TINY_TEMPERATURE) : 0;
    this.logMinP = o.min_p > 0 ? Math.log(o.min_p) : MIN_DRAW;
  }

  /** One byte from a (V,) Float32Array of logits. */
  sample(logits) {
    if (this.plainGreedy) {
      const best = argmax(logits);
      if (!this.banned.includes(best)) return best;
    }
    const x = Float64Array.from(logits);
    for (const b of this.banned) x[b] = -Infinity;
    if (this.adjusts) this._adjust(x);
    if (this.temperature === 0) return argmax(x);
    const max = x[argmax(x)], ids = [], logp = [];
    for (let i = 0; i < x.length; i++) {
      const d = (x[i] - max) / this.temperature;  // log p relative to the most likely byte
      if (d >= this.logMinP) { ids.push(i); logp.push(d); }
    }
    return this.pick(ids, logp);
  }

  _adjust(x) {  // repetition penalty over the window, presence and frequency, logit bias (in order)
    if (this.penalized && this.recent.length) {
      const p = this.o.repetition_penalty;
      for (let v = 0; v < 256; v++) if (this.window[v] > 0) x[v] = x[v] > 0 ? x[v] / p : x[v] * p;
    }
    if (this.counts.size) for (let v = 0; v < 256; v++) x[v] -= this.penalty[v];
    if (this.bias) for (let v = 0; v < 256; v++) x[v] += this.bias[v];
  }

  /** top-k, then top-p of the mass left, then one draw, over the min-p candidates. */
  pick(ids, logp) {
    const order = ids.map((_, i) => i).sort((a, b) => logp[b] - logp[a]).slice(0, this.topK);  // ties: lower byte
    const cdf = [];
    let sum = 0;
    for (const i of order) { sum += Math.exp(logp[i]); cdf.push(sum); }
    if (!cdf.length) throw new Error("no byte to sample: the row's logits are not finite");
    let keep = cdf.length;
    if (this.o.top_p < 1) keep = Math.min(keep, bisectLeft(cdf, this.o.top_p * cdf[cdf.length - 1], cdf.length) + 1);
    this.draws++;
    const target = this.rng.random() * cdf[keep - 1];
    return ids[order[Math.min(bisectRight(cdf, target, keep), keep - 1)]];
  }

  remember(token) {  // a token now in the row: the repetition window
    const n = this.o.repeat_last_n, recent = this.recent;
    if (!n) return;
    recent.push(token);
    this.window[token]++;
    if (recent.length > n) this.window[recent[recent.length - n - 1]]--;
    if (recent.length > 2 * n) recent.splice(0, recent.length - n);
  }

  accepted(token) {  // a generated token: presence and frequency
    if (!this.counted) return;
    const c = (this.counts.get(token) || 0) + 1;
    this.counts.set(token, c);
    this.penalty[token] = c * this.o.frequency_penalty + this.o.presence_penalty;
  }
}

// --- text: UTF-8 as Python's incremental decoder with errors="replace", and stop strings -----------
function endsWithPrefix(pending, stop) {  // the longest n < len(stop) (code points) with pending ending in stop[:n]
  const cps = Array.from(stop);
  for (let n = cps.length - 1; n > 0; n--) if (pending.endsWith(cps.slice(0, n).join(""))) return cps.slice(0, n).join("").length;
  return 0;
}

export class TextStream {
  constructor(stops = []) {
    this.decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
    this.stops = stops.filter((s) => s);
    this.pending = "";
    this.stopped = false;
  }

  push(bytes, final = false) {  // generated bytes -> the text safe to show now
    if (this.stopped) return "";
    const text = this.decoder.decode(bytes, { stream: !final });
    if (!this.stops.length) return text;
    this.pending += text;
    const found = this.stops.map((s) => this.pending.indexOf(s)).filter((at) => at >= 0);
    if (found.length) {  // the earliest stop string wins
      this.stopped = true;
      const out = this.pending.slice(0, Math.min(...found));
      this.pending = "";
      return out;
    }
    const hold = final ? 0 : Math.max(0, ...this.stops.map((s) => endsWithPrefix(this.pending, s)));
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return out;
  }

  finish() { return this.push(new Uint8Array(0), true); }
}

// --- options: the names, defaults and bounds of GenerateOptions/SamplingParams (fields.mjs) --------
function holds(spec, v) {
  switch (spec.kind) {
    case "number": case "integer": {
      const ok = spec.kind === "integer" ? Number.isInteger(v) : typeof v === "number" && Number.isFinite(v);
      return ok && (spec.above ? v > spec.low : v >= spec.low) && (spec.high === null || v <= spec.high);
    }
    case "seed": return v === null || ((Number.isInteger(v) || typeof v === "bigint") && BigInt(v) >= -(2n ** 63n) && BigInt(v) < 2n ** 63n);
    case "boolean": return typeof v === "boolean";
    case "string": return typeof v === "string";
    case "choice": return spec.choices.includes(v);
    case "stop": {
      const stops = typeof v === "string" ? [v] : v;
      return Array.isArray(stops) && stops.length <= spec.most && stops.every((s) => typeof s === "string" && s);
    }
    case "logit_bias": return v !== null && typeof v === "object" && !Array.isArray(v) && Object.entries(v).every(
      ([k, b]) => /^[0-9]+$/.test(k) && Number(k) < 256 && typeof b === "number" && Number.isFinite(b) && b >= spec.low && b <= spec.high);
  }
  return false;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function unicode(name, text) {  // codec.utf8's check, in the server's words (String.isWellFormed: Node 20; a Pi's is 18)
  const lone = LONE_SURROGATE.exec(text);
  if (lone) {
    const at = Array.from(text.slice(0, lone.index)).length;
    throw new Error(`${name} is not valid Unicode: a lone surrogate U+${lone[0].charCodeAt(0).toString(16).toUpperCase()} at character ${at}`);
  }
}

/** options -> every option with its default filled in, or an Error with the server's 400 message. */
export function checkOptions(options = {}) {
  if (options === null || typeof options !== "object") throw new Error("options must be an object");
  const o = {};
  for (const key of Object.keys(options)) {
    if (!Object.hasOwn(SPEC, key)) throw new Error(`unknown option ${key}; the options are ${Object.keys(SPEC).join(", ")}`);
  }
  for (const [name, spec] of Object.entries(SPEC)) {
    const v = options[name] === undefined || options[name] === null ? DEFAULTS[name] : options[name];  // (null: absent, as the server reads it)
    if (!holds(spec, v)) throw new Error(`${name} must be ${spec.what}`);
    o[name] = v;
  }
  o.stop = typeof o.stop === "string" ? [o.stop] : [...o.stop];
  for (const [name, text] of [["prompt", o.prompt], ...o.stop.map((s) => ["stop", s])]) unicode(name, text);
  return o;
}

// --- the model: metadata from the .onnx file, then prefill and steps -------------------------------
function varint(buf, at) {  // -> [value, next]; values past 2**53 are not needed here
  let v = 0, scale = 1, b;
  do { b = buf[at++]; v += (b & 0x7f) * scale; scale *= 128; } while (b & 0x80);
  return [v, at];
}

function fields(buf, start, end, want) {  // protobuf fields numbered `want` (length-delimited) in buf[start:end]
  const out = [];
  let at = start;
  while (at < end) {
    let key, len;
    [key, at] = varint(buf, at);
    const wire = key % 8, field = Math.floor(key / 8);
    if (wire === 0) [, at] = varint(buf, at);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      [len, at] = varint(buf, at);
      if (field === want) out.push([at, at + len]);
      at += len;
    } else throw new Error(`unreadable protobuf (wire type ${wire})`);
  }
  if (at !== end) throw new Error("truncated protobuf");
  return out;
}

/** The `micromixer` metadata object of an .onnx file's bytes (ModelProto.metadata_props, field 14). */
export function readMetadata(bytes) {
  const text = new TextDecoder();
  for (const [a, b] of fields(bytes, 0, bytes.length, 14)) {
    const [k] = fields(bytes, a, b, 1), [v] = fields(bytes, a, b, 2);
    if (k && v && text.decode(bytes.subarray(...k)) === "micromixer") return JSON.parse(text.decode(bytes.subarray(...v)));
  }
  throw new Error("it has no micromixer metadata (not a file mixer-export or mixer-quantize wrote)");
}

function at(formula, W) {  // a context mode's number for this W (fields.mjs: floor(W * mul / div) + add)
  return formula === null ? Infinity : Math.floor((W * formula[0]) / formula[1]) + formula[2];
}

export class Model {
  /** ort: onnxruntime-web or onnxruntime-node; bytes: the .onnx file (Uint8Array). */
  static async load(ort, bytes, { threads = 1 } = {}) {
    let meta;
    try {
      meta = readMetadata(bytes);
    } catch (e) {
      throw new Error(`the model is not a MicroMixer .onnx file: ${e.message}`);
    }
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["cpu"],  // (onnxruntime-web's WebAssembly backend answers to "cpu" too)
      graphOptimizationLevel: "all", executionMode: "sequential", intraOpNumThreads: threads, enableCpuMemArena: false,
    });
    return new Model(ort, session, meta);
  }

  constructor(ort, session, meta) {
    this.ort = ort;
    this.session = session;
    this.meta = meta;
    this.W = meta.max_seq_len;
    this.ids = { pad: meta.pad_id, bos: meta.bos_id, eos: meta.eos_id };
  }

  /** Fold `tokens` into a state at `position` (null: a new one): one call -> [last logits (V,), state]. */
  async run(tokens, position, state) {
    const { ort, meta } = this, L = meta.num_layers, H = meta.hidden_dim;
    const feeds = {
      input_ids: new ort.Tensor("int64", BigInt64Array.from(tokens, BigInt), [1, tokens.length]),
      position: new ort.Tensor("int64", BigInt64Array.of(BigInt(position)), [1]),
      state: new ort.Tensor("float32", state || new Float32Array(L * H), [L, 1, H]),
    };
    const out = await this.session.run(feeds);
    const logits = out.logits.data, V = meta.vocab_size;
    return [logits.slice(logits.length - V), out.state_out.data];
  }

  /** A row's tokens folded as runtime/engine.py's `fold` does: calls ending at multiples of FOLD_CHUNK. */
  async fold(tokens, position = 0, state = null) {
    let logits = null;
    for (let i = 0; i < tokens.length;) {
      const n = Math.min(tokens.length - i, FOLD_CHUNK - (position % FOLD_CHUNK));
      [logits, state] = await this.run(tokens.slice(i, i + n), position, state);
      position += n;
      i += n;
    }
    return [logits, state, position];
  }

  /** A new row's prompt (ids with bos): a bounded mode folds its last tokens only, those the
   * state would depend on after its re-folds (context.py's `suffix`). -> [logits, state, position] */
  prefill(ids, boundary, keep) {
    const over = ids.length - boundary;
    const suffix = over > 0 ? keep + ((over - 1) % (boundary - keep)) + 1 : ids.length;
    return this.fold(ids.slice(ids.length - suffix));
  }

  /** Generate from options (checkOptions' names); onPiece(text) as text is made; (await) stopped() -> true
   * ends it between bytes. -> {text, finish_reason, bytes_per_second, tokens} */
  async generate(options, onPiece = () => {}, stopped = () => false) {
    const o = checkOptions(options), mode = CONTEXT_MODES[o.context], W = this.W;
    const ids = [this.ids.bos, ...new TextEncoder().encode(o.prompt)];
    const sampler = new Sampler(o, seedValue(o.seed), this.ids), text = new TextStream(o.stop);
    const boundary = at(mode.boundary, W), keep = at(mode.keep, W);
    let [logits, state, position] = await this.prefill(ids, boundary, keep);
    let history = ids.slice(-W);
    for (const t of o.repeat_last_n ? ids.slice(-o.repeat_last_n) : []) sampler.remember(t);
    const pieces = [], made = [], t0 = performance.now();
    const emit = (piece) => { if (piece) { pieces.push(piece); onPiece(piece); } };
    let finish = o.max_tokens === 0 ? "length" : null;
    while (finish === null) {
      if (await stopped()) { finish = "cancelled"; break; }
      const token = sampler.sample(logits);
      if (token === this.ids.eos && !o.ignore_eos) { finish = "stop"; break; }
      sampler.accepted(token);
      sampler.remember(token);
      made.push(token);
      emit(text.push(Uint8Array.of(token)));
      if (text.stopped) { finish = "stop"; break; }
      if (made.length >= o.max_tokens) { finish = "length"; break; }
      if (position >= boundary) {  // a re-fold: the last `keep` tokens and the new one from position 0
        const block = [...history.slice(history.length - keep), token];
        [logits, state] = await this.run(block, 0, null);  // (one call, as the engine's _refold)
        position = block.length;
      } else {
        [logits, state] = await this.run([token], position, state);
        position += 1;
      }
      if (boundary !== Infinity) {
        history.push(token);
        if (history.length > 2 * W) history = history.slice(-W);
      }
    }
    emit(text.finish());
    const seconds = (performance.now() - t0) / 1000;
    return { text: pieces.join(""), finish_reason: finish, bytes_per_second: seconds > 0 ? made.length / seconds : 0,
             tokens: made };
  }
}
