// The playground's request as code a user can paste: curl, Python (openai SDK) and Node (openai SDK). The key is
// never written into them: they read EMBEDDINGS_API_KEY from the environment.

const EXTENSIONS = ["normalize", "input_type", "truncate"]; // not in OpenAI's SDK signatures

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

function pythonValue(value) {
  if (value === true) {
    return "True";
  }
  if (value === false) {
    return "False";
  }
  if (Array.isArray(value)) {
    return `[${value.map(pythonValue).join(", ")}]`;
  }
  if (value && typeof value === "object") {
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${pythonValue(v)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(value); // strings and numbers: JSON's literals are Python's
}

function split(body) {
  const standard = {};
  const extensions = {};
  for (const [name, value] of Object.entries(body)) {
    (EXTENSIONS.includes(name) ? extensions : standard)[name] = value;
  }
  return { standard, extensions };
}

export function curlSnippet(origin, body) {
  return [
    `curl ${origin}/v1/embeddings \\`,
    `  -H "Authorization: Bearer $EMBEDDINGS_API_KEY" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d ${shellQuote(JSON.stringify(body, null, 2))}`,
  ].join("\n");
}

export function pythonSnippet(origin, body) {
  const { standard, extensions } = split(body);
  const args = Object.entries(standard).map(([k, v]) => `    ${k}=${pythonValue(v)},`);
  if (Object.keys(extensions).length) {
    args.push(`    extra_body=${pythonValue(extensions)},  # this service's extensions`);
  }
  return [
    "# pip install openai",
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(`${origin}/v1`)}, api_key=os.environ["EMBEDDINGS_API_KEY"])`,
    "response = client.embeddings.create(",
    ...args,
    ")",
    "for item in response.data:",
    "    print(item.index, item.embedding[:4])",
  ].join("\n");
}

export function nodeSnippet(origin, body) {
  const { standard, extensions } = split(body);
  const lines = Object.entries(standard).map(([k, v]) => `  ${k}: ${JSON.stringify(v)},`);
  if (Object.keys(extensions).length) {
    lines.push("  // this service's extensions (sent as they are)");
    lines.push(...Object.entries(extensions).map(([k, v]) => `  ${k}: ${JSON.stringify(v)},`));
  }
  return [
    "// embed.mjs (npm install openai; node embed.mjs)",
    'import OpenAI from "openai";',
    "",
    `const client = new OpenAI({ baseURL: ${JSON.stringify(`${origin}/v1`)}, apiKey: process.env.EMBEDDINGS_API_KEY });`,
    "const response = await client.embeddings.create({",
    ...lines,
    "});",
    "for (const item of response.data) {",
    "  console.log(item.index, item.embedding.slice(0, 4));",
    "}",
  ].join("\n");
}
