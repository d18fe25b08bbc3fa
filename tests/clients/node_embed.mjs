// The official Node SDK (npm `openai`, installed by `make setup` into build/npm) as a user calls it: default
// settings (it asks for base64 and decodes it). Reads {"texts": [...]} on stdin, prints {"vectors": [[...], ...]}.
// Usage: OPENAI_NODE_MODULES=build/npm/node_modules node tests/clients/node_embed.mjs BASE_URL MODEL
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.resolve(process.env.OPENAI_NODE_MODULES) + "/");
const sdk = require("openai");
const OpenAI = sdk.OpenAI ?? sdk.default ?? sdk;
const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });

let raw = "";
for await (const chunk of process.stdin) raw += chunk;
const { texts } = JSON.parse(raw);
const result = await client.embeddings.create({ model, input: texts });
const vectors = [...result.data].sort((a, b) => a.index - b.index).map((d) => Array.from(d.embedding));
console.log(JSON.stringify({ vectors }));
