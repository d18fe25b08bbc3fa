// The official Node SDK (npm `openai`, installed by `make setup` into build/npm) against the gateway.
// It asks for base64 by default and decodes every item unconditionally. Prints one JSON line per check.
// Usage: OPENAI_NODE_MODULES=build/npm/node_modules node tests/node/embeddings.mjs BASE_URL MODEL
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.resolve(process.env.OPENAI_NODE_MODULES) + "/");
const sdk = require("openai");
const OpenAI = sdk.OpenAI ?? sdk.default ?? sdk;
const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });

const texts = ["The quick brown fox", "jumps over the lazy dog"];
const result = await client.embeddings.create({ model, input: texts });
console.log(JSON.stringify({
  check: "default",
  model: result.model,
  usage: result.usage,
  data: result.data.map((d) => ({ index: d.index, embedding: Array.from(d.embedding) })),
}));

const floats = await client.embeddings.create({ model, input: texts[0], encoding_format: "float" });
console.log(JSON.stringify({ check: "float", embedding: floats.data[0].embedding }));

try {
  await client.embeddings.create({ model: "no-such-model", input: "x" });
  console.log(JSON.stringify({ check: "error", status: 200 }));
} catch (err) {
  console.log(JSON.stringify({ check: "error", status: err.status, code: err.code, param: err.param, type: err.type }));
}
