// worker.mjs: loads onnxruntime-web and the model, and generates off the page's main thread.
// Messages in: {type: "load", threads}, {type: "generate", id, options}, {type: "stop"}.
// Messages out: {type: "ready", meta, threads}, {type: "piece", id, piece}, {type: "done", id, result},
// {type: "error", id, message} (id null: loading failed).
import * as ort from "./ort.wasm.min.mjs";
import { Model } from "./micromixer.mjs";

// the smallest module with a SIMD instruction (v128.const; i8x16.popcnt), as wasm-feature-detect's
const SIMD = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0,
  253, 15, 253, 98, 11]);
let model = null, stopping = false;

async function fetchBytes(name, what) {
  let response;
  try {
    response = await fetch(new URL(name, import.meta.url));
  } catch (e) {
    throw new Error(`${what} (${name}) could not be fetched: ${e.message}`);
  }
  if (!response.ok) throw new Error(`${what} (${name}) is missing: HTTP ${response.status}; pack the folder again (mixer-pack MODEL.onnx --target web -o DIR)`);
  return new Uint8Array(await response.arrayBuffer());
}

async function inflate(bytes) {  // the .wasm is shipped gzipped (a host may have inflated it already)
  if (bytes[0] !== 0x1f || bytes[1] !== 0x8b) return bytes;
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function load(threads) {
  if (!WebAssembly.validate(SIMD)) {
    throw new Error("this browser has no WebAssembly SIMD, which onnxruntime-web needs: use a current Chrome, "
      + "Edge, Firefox or Safari 16.4+");
  }
  ort.env.wasm.wasmBinary = await inflate(await fetchBytes("ort-wasm-simd-threaded.wasm.gz", "onnxruntime-web's WebAssembly"));
  ort.env.wasm.numThreads = threads;
  const bytes = await fetchBytes("model.onnx", "the model");
  try {
    model = await Model.load(ort, bytes);
  } catch (e) {
    throw new Error(`model.onnx could not be loaded: ${e.message || e}`);
  }
  // V8 compiles WebAssembly in tiers: the first few hundred steps run ~2x slower (measured in
  // Chromium: 1,326 then 2,348 bytes/s), so they are taken here, before the page says ready
  await model.generate({ prompt: "", max_tokens: 400, temperature: 0, ignore_eos: true });
}

let lastYield = 0;
const channel = new MessageChannel();
async function stopped() {  // every ~25 ms, let the stop message in (onnxruntime's runs never wait on a task)
  if (performance.now() - lastYield > 25) {
    await new Promise((resolve) => { channel.port1.onmessage = resolve; channel.port2.postMessage(0); });
    lastYield = performance.now();
  }
  return stopping;
}

self.onmessage = async ({ data }) => {
  if (data.type === "stop") { stopping = true; return; }
  if (data.type === "load") {
    try {
      await load(data.threads);
      self.postMessage({ type: "ready", meta: model.meta, threads: data.threads });
    } catch (e) {
      self.postMessage({ type: "error", id: null, message: e.message || String(e) });
    }
    return;
  }
  if (data.type === "generate") {
    stopping = false;
    let text = "", posted = performance.now();  // pieces go out at most every 20 ms (a message a byte costs ~10 %)
    const flush = () => { if (text) self.postMessage({ type: "piece", id: data.id, piece: text }); text = ""; posted = performance.now(); };
    try {
      const result = await model.generate(data.options, (piece) => {
        text += piece;
        if (performance.now() - posted > 20) flush();
      }, stopped);
      flush();
      delete result.tokens;
      self.postMessage({ type: "done", id: data.id, result });
    } catch (e) {
      flush();  // (the text made before the failure)
      self.postMessage({ type: "error", id: data.id, message: e.message || String(e) });
    }
  }
};
