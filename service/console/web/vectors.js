// Vectors as the API returns them (float arrays, or base64 of little-endian float32) and their cosine similarities.

export function decodeEmbedding(embedding) {
  if (typeof embedding !== "string") {
    return Float64Array.from(embedding);
  }
  const bytes = Uint8Array.from(atob(embedding), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const vector = new Float64Array(bytes.length / 4);
  for (let i = 0; i < vector.length; i += 1) {
    vector[i] = view.getFloat32(i * 4, true);
  }
  return vector;
}

function dot(a, b) {
  let sum = 0;
  for (let i = 0; i < a.length; i += 1) {
    sum += a[i] * b[i];
  }
  return sum;
}

/** The n x n matrix of cosine similarities (NaN where a vector is all zeros). */
export function cosineMatrix(vectors) {
  const norms = vectors.map((v) => Math.sqrt(dot(v, v)));
  return vectors.map((a, i) => vectors.map((b, j) => dot(a, b) / (norms[i] * norms[j])));
}
