#!/usr/bin/env node
// run.mjs: the page's runner in Node, with onnxruntime-node (a board runner without Python):
//   npm install            (once, in this folder: package.json pins onnxruntime-node)
//   node run.mjs [MODEL.onnx] -p "Once upon a time" -n 300 --temperature 0.8 --seed 1
// The flags are mixer-run's; the options, defaults and bounds the page's (fields.mjs).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Model, SPEC, DEFAULTS } from "./micromixer.mjs";

globalThis.crypto ??= (await import("node:crypto")).webcrypto;  // (Node 18 has no global crypto)
const here = dirname(fileURLToPath(import.meta.url));
const flag = (name) => name.replaceAll("_", "-");
const NUMERIC = Object.keys(SPEC).filter((n) => ["number", "integer", "seed"].includes(SPEC[n].kind) && n !== "max_tokens");

const USAGE = `usage: node run.mjs [MODEL.onnx] -p PROMPT [options]   (MODEL: model.onnx beside run.mjs)

  -p, --prompt TEXT            the prompt ('-' reads stdin)
  -n, --max-new-tokens N       bytes to generate at most [${DEFAULTS.max_tokens}]
${NUMERIC.map((n) => `  ${n === "temperature" ? "-t, " : ""}--${flag(n)} X`.padEnd(31) + `${SPEC[n].what} [${DEFAULTS[n] ?? "random"}]`).join("\n")}
  --logit-bias BYTE:BIAS       add BIAS to byte BYTE's logit (repeatable)
  --stop TEXT                  stop when this string is generated (repeatable)
  --context MODE               ${SPEC.context.choices.join(", ")} [${DEFAULTS.context}]
  --ignore-eos                 never stop at the end-of-sequence token
  --threads N                  onnxruntime threads [1]
  --stats                      print bytes/s to stderr
  -h, --help                   this help`;

function fail(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(1);
}

function number(name, text, option = flag(name)) {  // as click reads an int or a float
  const integer = ["integer", "seed"].includes(SPEC[name].kind);
  if (!(integer ? /^[-+]?\d+$/ : /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i).test(text.trim())) {
    fail(`--${option} must be ${integer ? "an integer" : "a number"}, not ${JSON.stringify(text)}`);
  }
  if (SPEC[name].kind !== "seed") return Number(text);
  // a seed: any integer, as mixer-run's (the generator takes it modulo 2**64; the runner's bound is signed)
  const m = 1n << 64n, seed = ((BigInt(text.trim()) % m) + m) % m;
  return seed >= 1n << 63n ? seed - m : seed;
}

function stdinPrompt() {  // mixer-run's: UTF-8, the trailing newlines dropped
  const bytes = readFileSync(0), decoder = new TextDecoder("utf-8", { fatal: true });
  for (let i = 0; i < bytes.length; i++) {  // (where the first bad byte is)
    try {
      decoder.decode(bytes.subarray(i, i + 1), { stream: i + 1 < bytes.length });
    } catch {
      fail(`stdin is not valid UTF-8 (byte ${i})`);
    }
  }
  return new TextDecoder().decode(bytes).replace(/\n+$/, "");
}

const VALUED = new Set(["-p", "-n", "-t", "--prompt", "--max-new-tokens", "--temperature", "--logit-bias", "--stop",
  "--context", "--threads", ...NUMERIC.map((n) => `--${flag(n)}`)]);
function joined(argv) {  // "--seed -7" as "--seed=-7": parseArgs takes a leading "-" for another flag
  const out = [];
  for (let i = 0; i < argv.length; i++) {
    if (VALUED.has(argv[i]) && /^-[\d.]/.test(argv[i + 1] ?? "")) out.push(`${argv[i]}${argv[i].startsWith("--") ? "=" : ""}${argv[++i]}`);
    else out.push(argv[i]);
  }
  return out;
}

const FLAGS = { max_tokens: "max-new-tokens" };  // an option's message, in the flag's name
function flagged(message) {
  const m = /^([a-z_]+) (must be|is not)/.exec(message);
  return m && (m[1] in SPEC) ? `--${FLAGS[m[1]] || flag(m[1])}${message.slice(m[1].length)}` : message;
}

async function onnxruntime() {  // onnxruntime-node from this folder, or from where node runs
  for (const from of [here, process.cwd()]) {
    try {
      return createRequire(join(from, "x.js"))("onnxruntime-node");
    } catch { /* the next place */ }
  }
  fail(`onnxruntime-node is not installed: run \`npm install\` in ${here} (its package.json pins the version)`);
}

async function main() {
  const options = {};
  for (const n of NUMERIC) options[flag(n)] = { type: "string" };
  let args;
  try {
    args = parseArgs({ args: joined(process.argv.slice(2)), allowPositionals: true, options: {
      ...options, prompt: { type: "string", short: "p" }, "max-new-tokens": { type: "string", short: "n" },
      "logit-bias": { type: "string", multiple: true }, stop: { type: "string", multiple: true },
      context: { type: "string" }, "ignore-eos": { type: "boolean" }, threads: { type: "string" },
      stats: { type: "boolean" }, help: { type: "boolean", short: "h" }, temperature: { type: "string", short: "t" } } });
  } catch (e) {
    const unknown = /Unknown option '([^']+)'/.exec(e.message);
    fail(`${unknown ? `unknown option ${unknown[1]}` : e.message.split(".")[0]} (node run.mjs --help lists the options)`);
  }
  const { values: v, positionals } = args;
  if (v.help) { console.log(USAGE); return; }
  if (positionals.length > 1) fail("give one MODEL.onnx");
  const o = {};
  for (const n of NUMERIC) if (v[flag(n)] !== undefined) o[n] = number(n, v[flag(n)]);
  if (v["max-new-tokens"] !== undefined) o.max_tokens = number("max_tokens", v["max-new-tokens"], "max-new-tokens");
  if (v.prompt === undefined) fail("give a prompt: -p TEXT (or -p - to read stdin)");
  o.prompt = v.prompt === "-" ? stdinPrompt() : v.prompt;
  if (!o.prompt) fail("the prompt is empty; give text with -p, or -p - to read stdin");
  if (v.stop) o.stop = v.stop;
  if (v.context !== undefined) o.context = v.context;
  if (v["ignore-eos"]) o.ignore_eos = true;
  if (v["logit-bias"]) {
    o.logit_bias = {};
    for (const item of v["logit-bias"]) {
      const m = /^(\d+):(-?[\d.]+(?:e-?\d+)?)$/i.exec(item);
      if (!m) fail(`--logit-bias takes BYTE:BIAS (such as 10:-100), not ${JSON.stringify(item)}`);
      o.logit_bias[m[1]] = Number(m[2]);
    }
  }
  const path = positionals[0] ?? join(here, "model.onnx");
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    fail(`${path}: ${e.code === "ENOENT" ? "no such file" : e.message}`);
  }
  const ort = await onnxruntime();
  const threads = v.threads === undefined ? 1 : Number(v.threads);
  if (!Number.isInteger(threads) || threads < 1) fail("--threads must be an integer >= 1");
  let model;
  try {
    model = await Model.load(ort, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length), { threads });
  } catch (e) {
    fail(`${path}: ${e.message.split("\n")[0]}`);
  }
  try {
    const r = await model.generate(o, (piece) => process.stdout.write(piece));
    process.stdout.write("\n");
    if (v.stats) process.stderr.write(`${r.tokens.length} bytes generated at ${Math.round(r.bytes_per_second)} bytes/s (${r.finish_reason})\n`);
  } catch (e) {
    fail(flagged(e.message.split("\n")[0]));
  }
}

process.stdout.on("error", (e) => process.exit(e.code === "EPIPE" ? 0 : 1));  // (| head: a closed pipe ends it quietly)

await main();
