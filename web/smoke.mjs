import * as ort from "onnxruntime-node";
import { readFileSync } from "node:fs";
import { Model } from "/work/main/micromixer_edge/pack/web/micromixer.mjs";
const m = await Model.load(ort, readFileSync(process.argv[2]));
const opts = JSON.parse(process.argv[3]);
const r = await m.generate(opts);
console.log(JSON.stringify(r.text)); console.error(r.finish_reason, r.bytes_per_second.toFixed(0));
