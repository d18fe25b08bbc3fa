"""buf.gen.yaml: stubs for other languages generate offline, and work. The TypeScript declarations type-check with
tsc (and a wrong field type is refused), Node imports the generated JavaScript and encodes a request that the
generated Python stubs decode to the same fields, and the Python descriptors equal the ones the server is built from.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "build" / "npm" / "node_modules"
TS_OUT, PY_OUT = Path("build/gen/stubs/ts"), Path("build/gen/stubs/python")

NODE_CHECK = """
import { create, toBinary } from "@bufbuild/protobuf";
import { EmbedRequestSchema, EmbeddingService, InputType } from "./ts/embeddings/v1/embeddings_pb.js";
import { JobService } from "./ts/embeddings/v1/jobs_pb.js";
const request = create(EmbedRequestSchema, {
  model: "all-minilm-l6-v2", inputs: ["first text", "zweiter Text"], dimensions: 128, inputType: InputType.QUERY,
});
console.log(JSON.stringify({
  request: Buffer.from(toBinary(EmbedRequestSchema, request)).toString("base64"),
  embedding_methods: Object.keys(EmbeddingService.method).sort(),
  job_methods: Object.keys(JobService.method).length,
}));
"""

TS_GOOD = """
import { create } from "@bufbuild/protobuf";
import { EmbedRequestSchema, type EmbedResponse } from "./ts/embeddings/v1/embeddings_pb.js";
const request = create(EmbedRequestSchema, { model: "m", inputs: ["a"], dimensions: 8 });
export function firstVector(response: EmbedResponse): Uint8Array | undefined { return response.embeddings[0]?.data; }
export const model: string = request.model;
"""

TS_BAD = TS_GOOD.replace("dimensions: 8", 'dimensions: "eight"')


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(NODE_MODULES / ".bin")])}
    env["PATH"] += os.pathsep + os.environ.get("PATH", "")
    command = [str(NODE_MODULES / ".bin" / "buf"), "generate", "--template", "buf.gen.yaml", "--output", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stubs = out / "build" / "gen" / "stubs"
    # The generated modules are ES modules; their runtime comes from the project's npm folder.
    (stubs / "package.json").write_text(json.dumps({"type": "module"}))
    (stubs / "node_modules").symlink_to(NODE_MODULES)
    # protoc writes no __init__.py: make the generated Python a regular package, as a consumer would, so that it
    # (first on PYTHONPATH) and not the project's own generated package is imported.
    for package in ("embeddings", "embeddings/v1"):
        (stubs / "python" / package / "__init__.py").touch()
    return stubs


def test_typescript_declarations_type_check(generated):
    tsc = [str(NODE_MODULES / ".bin" / "tsc"), "--noEmit", "--strict", "--target", "es2022"]
    tsc += ["--module", "nodenext", "--moduleResolution", "nodenext", "--skipLibCheck"]
    for name, source in (("good.ts", TS_GOOD), ("bad.ts", TS_BAD)):
        (generated / name).write_text(source)
    good = subprocess.run([*tsc, "good.ts"], cwd=generated, capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run([*tsc, "bad.ts"], cwd=generated, capture_output=True, text=True, timeout=300)
    # Line 4 sets `dimensions` (a uint32 field) to a string.
    assert bad.returncode != 0 and "bad.ts(4," in bad.stdout and "not assignable to type 'number'" in bad.stdout


def test_node_encodes_what_the_generated_python_decodes(generated):
    (generated / "check.mjs").write_text(NODE_CHECK)
    done = subprocess.run(["node", "check.mjs"], cwd=generated, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["embedding_methods"] == ["embed", "getModel", "listModels"] and result["job_methods"] >= 9
    decode = (
        "import base64, sys\n"
        "from embeddings.v1 import embeddings_pb2 as pb\n"
        "assert pb.__file__.startswith(sys.argv[2]), pb.__file__\n"
        "request = pb.EmbedRequest.FromString(base64.b64decode(sys.argv[1]))\n"
        "print(request.model, list(request.inputs), request.dimensions, pb.InputType.Name(request.input_type))\n"
    )
    python_out = str(generated / "python")
    env = {**os.environ, "PYTHONPATH": python_out}  # the generated stubs first, before the project's own
    command = [sys.executable, "-c", decode, result["request"], python_out]
    done = subprocess.run(command, cwd=generated, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "all-minilm-l6-v2 ['first text', 'zweiter Text'] 128 INPUT_TYPE_QUERY"
    assert base64.b64decode(result["request"])  # non-empty wire bytes


def test_python_stubs_match_the_servers_descriptors(generated):
    script = (
        "import sys\n"
        "from embeddings.v1 import embeddings_pb2, jobs_pb2\n"
        "assert embeddings_pb2.__file__.startswith(sys.argv[1]), embeddings_pb2.__file__\n"
        "sys.stdout.buffer.write(embeddings_pb2.DESCRIPTOR.serialized_pb + b'|' + jobs_pb2.DESCRIPTOR.serialized_pb)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(generated / "python")}
    command = [sys.executable, "-c", script, str(generated / "python")]
    done = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from service._gen.embeddings.v1 import embeddings_pb2, jobs_pb2  # the server's, from `make proto`

    ours = [embeddings_pb2.DESCRIPTOR.serialized_pb, jobs_pb2.DESCRIPTOR.serialized_pb]
    assert [comparable(d) for d in done.stdout.split(b"|", 1)] == [comparable(d) for d in ours]
    assert (generated / "python" / "embeddings" / "v1" / "embeddings_pb2.pyi").is_file()


def comparable(serialized: bytes) -> descriptor_pb2.FileDescriptorProto:
    """A file descriptor without `json_name` (buf always fills it in, protoc only when the .proto sets it)."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)

    def strip(messages) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)

    strip(proto.message_type)
    return proto
