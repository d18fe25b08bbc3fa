// The official Node SDK (npm `openai`, installed by `make setup` into build/npm) runs a whole batch through the
// gateway: upload a JSONL file, create the batch, poll it, download the output and error files.
// Prints one JSON line: {status, counts, output, errors}.
// Usage: OPENAI_NODE_MODULES=build/npm/node_modules node tests/node/batches.mjs BASE_URL FILE.jsonl
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.resolve(process.env.OPENAI_NODE_MODULES) + "/");
const sdk = require("openai");
const OpenAI = sdk.OpenAI ?? sdk.default ?? sdk;
const [baseURL, input] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });

const file = await client.files.create({ file: fs.createReadStream(input), purpose: "batch" });
let batch = await client.batches.create({
  input_file_id: file.id,
  endpoint: "/v1/embeddings",
  completion_window: "24h",
});
const final = new Set(["completed", "failed", "cancelled", "expired"]);
while (!final.has(batch.status)) {
  await new Promise((resolve) => setTimeout(resolve, 200));
  batch = await client.batches.retrieve(batch.id);
}
const text = async (id) => (id ? await (await client.files.content(id)).text() : "");
console.log(JSON.stringify({
  status: batch.status,
  counts: batch.request_counts,
  output: await text(batch.output_file_id),
  errors: await text(batch.error_file_id),
}));
