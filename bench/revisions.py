"""A/B benchmark of git revisions of this repository, served side by side on one machine.

    python -m bench.revisions --rev before=de42286 --rev arch=a08db61 --rev main=HEAD [--quick] [--out DIR]

Each revision is checked out with `git worktree add --detach` into a temporary directory (removed at the end), its
generated code made there by its own Makefile's `proto` recipe, and its own server (`python -m service`, cwd = that
tree, this checkout's virtual environment) started on a port of its own, serving all-minilm-l6-v2 alone with the
server's default workers and threads. A revision that refuses this checkout's model repository (older manifests
know fewer fields) gets the model built by its own Makefile's `models` recipe, cached under
build/revisions/models-<commit>. Where a revision has the embedding cache or the solo graph, they are turned off
(`--cache-bytes 0`, `--solo-graph false`: the texts are unique anyway, and the fused lone-text graph is later
performance work); such a revision is also measured with its defaults, as one more column. The first revision is
the baseline; a second server of it (the A/A control, `--no-control` leaves it out) measures what noise alone does
to the ratios.

Load (bench/lean.py's clients: requests serialized before timing, a raw unary_unary on
/embeddings.v1.EmbeddingService/Embed; REST: pre-encoded HTTP/1.1 through each revision's own Envoy configuration):
(a) 1 short text a call, 1 client: p50 and p95; (b) 1 text a call, 32 concurrent: calls/s; (c) 32 texts a call,
8 concurrent: texts/s; (d) one ~250-token text a call, 1 client: p50; then (a) and (b) over REST. Texts are STS-B
test sentences, made unique per pass by a short suffix, the same for every revision within a repeat.

Fairness on a shared machine: every server is started (and warmed) before any pass, and idles while another is
measured; passes go shape by shape, each revision in turn (the order rotated every repeat), so the revisions' passes
of a shape lie close together in time; every pass first waits for a quiet machine (bench.lean.wait_quiet). Figures
are medians over the repeats, and each revision is a ratio to the baseline's pass of the same repeat (paired), with
the spread of those ratios; a change counts as beyond noise when the median ratio moves further than the A/A
control's median ratio moved in any shape or metric (two servers of the same code: at least 3%; 5% without a
control) and two thirds of the pairs agree. Passes disturbed by other processes (more
than 0.2 cores meanwhile) are left out with their pair. `--summarize revisions.json` re-renders a saved run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import orjson

from bench.common import machine_facts
from bench.lean import Measured, Snapshot, grpc_calls, http_calls, http_request, median, percentile, run, wait_quiet
from bench.report import RESULTS, write_report
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from tests.serving import EnvoyProcess, ServerProcess, free_port
from tests.stsb import load_pairs

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-minilm-l6-v2"
EMBED = "/embeddings.v1.EmbeddingService/Embed"
REST_PATH = "/v1/embeddings"
MODEL_CACHE = ROOT / "build" / "revisions"
# Settings that a revision knows (its service/config.py declares the field) and that make it comparable to the
# revisions before it: the embedding cache (unique texts never hit) and the fused lone-text graph (later perf work).
COMPARABLE = {"cache_bytes": ("--cache-bytes", "0"), "solo_graph": ("--solo-graph", "false")}
# The serialized request every revision must read as this checkout writes it (its own EmbedRequest checked).
PROBE = {"model": MODEL, "inputs": ["probe one", "probe two"]}
LONG_TOKENS = 250  # a long text: STS-B sentences joined up to this many tokens (the model's limit is 256)
DEFAULT_NOISE = 0.05  # the noise band without an A/A control
MIN_NOISE = 0.03  # the least noise band an A/A control sets
# A pass during which other processes used more than this many cores is disturbed: it (and its pair) is left out of
# the medians and ratios while MIN_CLEAN repeats remain. Idle servers and Envoys of the run count as other: ~0.05.
DISTURBED_CORES = 0.2
MIN_CLEAN = 3
AGREE = 2 / 3  # the share of pairs whose ratio must lie on the median's side


# ---------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    path: str  # grpc | rest
    texts: int  # per call
    clients: int
    calls: int
    quick_calls: int
    long: bool = False

    @property
    def metrics(self) -> tuple[str, ...]:
        """What the shape reports (the first is its headline), besides the server's CPU per call."""
        if self.clients == 1:
            return ("p50_ms", "p95_ms") if not self.long else ("p50_ms",)
        return ("texts_per_s",) if self.texts > 1 else ("calls_per_s",)


SHAPES = (
    Shape("a", "1 short text, 1 client", "grpc", 1, 1, 200, 60),
    Shape("b", "1 text a call, 32 clients", "grpc", 1, 32, 600, 300),
    Shape("c", "32 texts a call, 8 clients", "grpc", 32, 8, 32, 12),
    Shape("d", "1 long text, 1 client", "grpc", 1, 1, 40, 15, long=True),
    Shape("ra", "REST: 1 short text, 1 client", "rest", 1, 1, 200, 60),
    Shape("rb", "REST: 1 text a call, 32 clients", "rest", 1, 32, 600, 300),
)
HIGHER_IS_BETTER = {"p50_ms": False, "p95_ms": False, "calls_per_s": True, "texts_per_s": True, "server_ms": False}
UNITS = {"p50_ms": "p50 ms", "p95_ms": "p95 ms", "calls_per_s": "calls/s", "texts_per_s": "texts/s"}


# ---------------------------------------------------------------- revisions


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_recipe(tree: Path, target: str, variables: dict[str, str]) -> list[list[str]]:
    """The commands of a Makefile rule at that revision (following a rule without commands to its first
    prerequisite that has a rule), `$(VAR)`s substituted; `touch` lines left out."""
    text = (tree / "Makefile").read_text()
    for _ in range(5):
        match = re.search(rf"^{re.escape(target)}:([^\n]*)\n((?:\t[^\n]*\n)*)", text, re.M)
        if match is None:
            raise SystemExit(f"{tree}: no Makefile rule for {target}")
        lines = [line.strip() for line in match.group(2).splitlines() if not line.strip().startswith("touch ")]
        if lines:
            break
        prerequisites = match.group(1).split()
        target = next((p for p in prerequisites if re.search(rf"^{re.escape(p)}:", text, re.M)), "")
    commands = []
    for line in lines:
        for name, value in variables.items():
            line = line.replace(f"$({name})", value)
        if "$(" in line:
            raise SystemExit(f"{tree}: cannot run the Makefile line {line!r} here")
        commands.append(shlex.split(line))
    return commands


@dataclass
class Tree:
    """One commit checked out."""

    commit: str
    path: Path
    subject: str
    model_repo: Path | None = None
    model_note: str = ""

    @property
    def short(self) -> str:
        return self.commit[:7]

    def python(self, *args: str, timeout: float = 600) -> str:
        """Run this checkout's Python (cwd = the tree: its packages, not this checkout's) and return its stdout."""
        done = subprocess.run(
            [sys.executable, *args], cwd=self.path, capture_output=True, text=True, timeout=timeout, env=clean_env()
        )
        if done.returncode != 0:
            raise SystemExit(f"{self.short}: {' '.join(args)[:80]} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        return done.stdout

    def knows(self, setting: str) -> bool:
        return re.search(rf"^\s+{setting}:", (self.path / "service" / "config.py").read_text(), re.M) is not None

    def comparable_flags(self) -> list[str]:
        return [flag for setting, pair in COMPARABLE.items() if self.knows(setting) for flag in pair]


def clean_env() -> dict[str, str]:
    """The environment for another checkout's processes: nothing that points Python at this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("EMBED_")}


def checkout(commit: str, parent: Path) -> Tree:
    path = parent / commit[:12]
    git("worktree", "add", "--detach", str(path), commit)
    tree = Tree(commit, path, git("log", "-1", "--format=%s", commit)[:100])
    variables = {"PY": sys.executable, "PYTHON": sys.executable}
    for command in make_recipe(path, "proto", variables):
        subprocess.run(command, cwd=path, check=True, capture_output=True, env=clean_env())
    if not (path / "service" / "_gen" / "embeddings" / "v1" / "embeddings_pb2.py").exists():
        raise SystemExit(f"{tree.short}: its proto recipe wrote no service/_gen/embeddings/v1/embeddings_pb2.py")
    check_contract(tree)
    return tree


def check_contract(tree: Tree) -> None:
    """The revision's own EmbedRequest serializes the probe to the same bytes as this checkout's, and its
    EmbedResponse fields the check reads have the same numbers, so one set of payloads serves every revision."""
    ours = pb.EmbedRequest(**PROBE).SerializeToString().hex()
    script = (
        "import json; from service._gen.embeddings.v1 import embeddings_pb2 as pb; "
        f"r = pb.EmbedRequest(**json.loads({json.dumps(json.dumps(PROBE))})); "
        "f = lambda m: {x.name: [x.number, x.type] for x in m.DESCRIPTOR.fields}; "
        "print(json.dumps([r.SerializeToString().hex(), f(pb.EmbedResponse), f(pb.Embedding), f(pb.Usage)]))"
    )
    theirs, response, embedding, usage = json.loads(tree.python("-c", script))
    fields = [("EmbedResponse", pb.EmbedResponse, response), ("Embedding", pb.Embedding, embedding)]
    fields.append(("Usage", pb.Usage, usage))
    wanted = {
        "EmbedResponse": ("embeddings", "dimensions", "usage"),
        "Embedding": ("values",),
        "Usage": ("prompt_tokens",),
    }
    for name, message, described in fields:
        for field_name in wanted[name]:
            mine = message.DESCRIPTOR.fields_by_name[field_name]
            if described.get(field_name) != [mine.number, mine.type]:
                raise SystemExit(f"{tree.short}: {name}.{field_name} differs from this checkout's; not comparable")
    if theirs != ours:
        raise SystemExit(f"{tree.short}: its EmbedRequest serializes differently ({theirs} vs {ours})")


def build_models(tree: Tree) -> Path:
    """The model built by that revision's own `make models` recipe, cached per commit."""
    dest = MODEL_CACHE / f"models-{tree.commit}"
    if (dest / MODEL / "manifest.json").exists():
        return dest
    variables = {"PY": sys.executable, "MODEL_REPO": str(dest), "MODELS_FLAG": f"--models {MODEL}"}
    for command in make_recipe(tree.path, "models", variables):
        print(f"{tree.short}: building {MODEL} with its own tool: {' '.join(command[1:])}", file=sys.stderr)
        done = subprocess.run(command, cwd=tree.path, capture_output=True, text=True, env=clean_env())
        if done.returncode != 0:
            shutil.rmtree(dest, ignore_errors=True)
            raise SystemExit(f"{tree.short}: model build failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return dest


# ---------------------------------------------------------------- servers


@dataclass
class Variant:
    """One server: a revision with its flags (and its Envoy when REST is measured)."""

    name: str
    rev: str
    tree: Tree
    flags: list[str]
    server: ServerProcess | None = None
    envoy: EnvoyProcess | None = None
    envoy_port: int = 0
    channel: grpc.aio.Channel | None = None

    @property
    def pids(self) -> list[int]:
        procs = (self.server.proc if self.server else None, self.envoy.proc if self.envoy else None)
        return [p.pid for p in procs if p is not None]

    def start(self, model_repo: Path, log_dir: Path) -> None:
        tree = self.tree
        if tree.model_repo is None:
            try:
                self.server = self._serve(model_repo)
                tree.model_repo, tree.model_note = model_repo, "this checkout's models/"
                return
            except RuntimeError as err:
                if "manifest" not in str(err):
                    raise
                refusal = next((line for line in str(err).splitlines() if "manifest" in line), "")
                tree.model_note = f"refused models/ ({refusal.split(': ', 1)[-1]}); built by its own tool"
                tree.model_repo = build_models(tree)
        self.server = self._serve(tree.model_repo)

    def _serve(self, repo: Path) -> ServerProcess:
        args = ("--models", MODEL, *self.flags)
        # PYTHONPATH empty: the tree's own packages (cwd) come first, this checkout's only through the venv's
        # editable finder, which Python consults after them.
        return ServerProcess(repo, *args, env={"PYTHONPATH": ""}, cwd=self.tree.path).start()

    def start_envoy(self, log_dir: Path) -> None:
        """That revision's gateway (its gateway.envoy renders its envoy.yaml) in front of this server."""
        assert self.server is not None
        self.envoy_port = free_port()
        config = log_dir / f"{self.name}.envoy.yaml"
        script = (
            "import json, sys; from pathlib import Path; "
            "from gateway.envoy import GatewayPorts, envoy_command, write_rendered; "
            "p = write_rendered(GatewayPorts(int(sys.argv[1]), int(sys.argv[2]), admin=0), Path(sys.argv[3])); "
            "print(json.dumps(envoy_command(p)))"
        )
        command = json.loads(self.tree.python("-c", script, str(self.envoy_port), str(self.server.port), str(config)))
        log = log_dir / f"{self.name}.envoy.log"
        self.envoy = EnvoyProcess.prepared(self.envoy_port, command, self.tree.path, log).start(timeout=60)

    def stop(self, log_dir: Path) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        if self.server is not None:
            self.server.stop()
            (log_dir / f"{self.name}.server.log").write_text(self.server.log)


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class Plan:
    repeats: int
    quick: bool
    rest: bool
    quiet_wait_s: float

    def shapes(self) -> list[Shape]:
        return [shape for shape in SHAPES if self.rest or shape.path == "grpc"]

    def calls(self, shape: Shape) -> int:
        return shape.quick_calls if self.quick else shape.calls


class Texts:
    """STS-B test sentences, and long texts joined from them, tagged per pass."""

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        self.sentences = load_pairs("test").sentences
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.lengths = [len(e.ids) - 2 for e in tokenizer.encode_batch(self.sentences)]

    def short(self, count: int, tag: str) -> list[str]:
        return [f"{self.sentences[i % len(self.sentences)]} ({tag})" for i in range(count)]

    def long(self, count: int, tag: str) -> list[str]:
        """`count` texts of up to LONG_TOKENS tokens (special tokens included), each its own run of sentences."""
        texts, at = [], 0
        budget = LONG_TOKENS - 2 - (len(self.tokenizer.encode(f"({tag} 000)").ids) - 2)
        for i in range(count):
            parts, used = [], 0
            while used + self.lengths[at % len(self.sentences)] <= budget:
                parts.append(self.sentences[at % len(self.sentences)])
                used += self.lengths[at % len(self.sentences)]
                at += 1
            at += 1
            texts.append(f"({tag} {i:03d}) " + " ".join(parts))
        return texts

    def calls(self, shape: Shape, calls: int, tag: str) -> list[list[str]]:
        texts = self.long(calls, tag) if shape.long else self.short(calls * shape.texts, tag)
        return [texts[i : i + shape.texts] for i in range(0, len(texts), shape.texts)]


def payloads(shape: Shape, calls: list[list[str]]) -> list[bytes]:
    """gRPC: EmbedRequest, float vectors (the default); REST: a whole HTTP request, base64 vectors (as the openai SDK
    asks)."""
    if shape.path == "grpc":
        return [pb.EmbedRequest(model=MODEL, inputs=texts).SerializeToString() for texts in calls]
    return [
        http_request(REST_PATH, orjson.dumps({"model": MODEL, "input": texts, "encoding_format": "base64"}))
        for texts in calls
    ]


def check_answer(name: str, shape: Shape, raw: bytes) -> int:
    """Raises unless the answer holds one 384-dimension vector per input; returns its token count."""
    if shape.path == "grpc":
        response = pb.EmbedResponse.FromString(raw)
        vectors = [len(e.values) for e in response.embeddings]
        ok = response.dimensions == 384 and vectors == [384] * shape.texts
        tokens = response.usage.prompt_tokens
    else:
        answer = orjson.loads(raw)
        ok = len(answer["data"]) == shape.texts and isinstance(answer["data"][0]["embedding"], str)
        tokens = answer["usage"]["prompt_tokens"]
    if not ok:
        raise RuntimeError(f"{name} {shape.key}: unexpected answer {raw[:200]!r}")
    return tokens


@dataclass
class PassResult:
    variant: str
    shape: str
    repeat: int
    calls: int
    texts: int
    seconds: float
    p50_ms: float
    p95_ms: float
    calls_per_s: float
    texts_per_s: float
    server_ms: float  # server CPU per call
    client_ms: float
    envoy_ms: float
    other_cores: float  # other processes' CPU meanwhile (the shared machine's load)
    waited_s: float
    tokens_per_call: float


async def one_pass(variant: Variant, shape: Shape, calls: list[list[str]], plan: Plan, quiet: list[int], repeat: int):
    assert variant.server is not None and variant.server.proc is not None
    requests = payloads(shape, calls)
    waited = wait_quiet(quiet, plan.quiet_wait_s) if repeat >= 0 else 0.0
    envoy_pid = variant.envoy.proc.pid if shape.path == "rest" and variant.envoy and variant.envoy.proc else None
    before = Snapshot.take(variant.server.proc.pid, envoy_pid)
    if shape.path == "grpc":
        assert variant.channel is not None
        latencies, first = await grpc_calls(variant.channel, EMBED, requests, shape.clients)
    else:
        latencies, first = await http_calls("127.0.0.1", variant.envoy_port, requests, shape.clients)
    after = Snapshot.take(variant.server.proc.pid, envoy_pid)
    tokens = check_answer(variant.name, shape, first)
    m = Measured.between(before, after, len(requests), latencies)
    texts = sum(len(c) for c in calls)
    return PassResult(
        variant=variant.name,
        shape=shape.key,
        repeat=repeat,
        calls=m.calls,
        texts=texts,
        seconds=m.seconds,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        calls_per_s=m.calls_per_s,
        texts_per_s=texts / m.seconds,
        server_ms=m.per_call_ms(m.server.total),
        client_ms=m.per_call_ms(m.client_s),
        envoy_ms=m.per_call_ms(m.envoy_s),
        other_cores=m.other_cores,
        waited_s=waited,
        tokens_per_call=tokens,
    )


async def measure(variants: list[Variant], plan: Plan, texts: Texts) -> list[PassResult]:
    shapes = plan.shapes()
    quiet = [pid for v in variants for pid in v.pids]
    results: list[PassResult] = []
    for variant in variants:
        variant.channel = grpc.aio.insecure_channel(variant.server.address)
    try:
        for variant in variants:  # warm-up: connections, the model's first shapes, each revision's code paths
            for shape in shapes:
                await one_pass(variant, shape, texts.calls(shape, min(plan.calls(shape), 40), "warm"), plan, quiet, -1)
        started = time.monotonic()
        for repeat in range(plan.repeats):
            order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
            for shape in shapes:
                calls = texts.calls(shape, plan.calls(shape), f"r{repeat}{shape.key}")
                for variant in order:
                    results.append(await one_pass(variant, shape, calls, plan, quiet, repeat))
            minutes = (time.monotonic() - started) / 60
            print(f"repeat {repeat + 1}/{plan.repeats} done ({minutes:.1f} min)", file=sys.stderr)
    finally:
        for variant in variants:
            if variant.channel is not None:
                await variant.channel.close()
    return results


# ---------------------------------------------------------------- summary


@dataclass
class Cell:
    """One variant's figure for one shape and metric: the median over its undisturbed repeats, and the per-repeat
    ratios to the baseline's pass of the same repeat (pairs where either pass was disturbed left out)."""

    median: float
    values: list[float]
    ratio: float = float("nan")  # median of the paired ratios
    ratios: list[float] = field(default_factory=list)
    clean: int = 0  # the repeats (or pairs) counted
    verdict: str = ""


def summarize(passes: list[dict], names: list[str], shapes: list[Shape], control: str | None):
    """Cells by variant, shape and metric, and the noise band. A pass during which other
    processes used more than DISTURBED_CORES is left out (with its pair), unless fewer than MIN_CLEAN would be left."""
    by = {(p["variant"], p["shape"], p["repeat"]): p for p in passes}
    repeats = sorted({p["repeat"] for p in passes})
    base = names[0]

    def calm(*keys: tuple[str, str, int]) -> bool:
        return all(by[key]["other_cores"] <= DISTURBED_CORES for key in keys)

    table: dict[str, dict[str, dict[str, Cell]]] = {}
    for name in names:
        table[name] = {}
        for shape in shapes:
            own = [r for r in repeats if calm((name, shape.key, r))]
            own = own if len(own) >= MIN_CLEAN else repeats
            pairs = [r for r in repeats if calm((name, shape.key, r), (base, shape.key, r))]
            pairs = pairs if len(pairs) >= MIN_CLEAN else repeats
            cells = {}
            for metric in (*shape.metrics, "server_ms"):
                values = [by[(name, shape.key, r)][metric] for r in own]
                ratios = [by[(name, shape.key, r)][metric] / by[(base, shape.key, r)][metric] for r in pairs]
                cells[metric] = Cell(median(values), values, median(ratios), ratios, len(pairs))
            table[name][shape.key] = cells
    # The noise band: how far the A/A control's median ratio strayed from 1 in any cell (the same code on two
    # servers: instance and machine noise on a median of this many repeats), one band for the whole run.
    band = DEFAULT_NOISE
    if control is not None:
        band = max(MIN_NOISE, *(abs(cell.ratio - 1) for row in table[control].values() for cell in row.values()))
    for name in names[1:]:
        for shape in shapes:
            for metric, cell in table[name][shape.key].items():
                cell.verdict = verdict(cell, band, HIGHER_IS_BETTER[metric])
    return table, band


def verdict(cell: Cell, band: float, higher_is_better: bool) -> str:
    """ "better"/"worse" when the median ratio lies beyond the noise band and most repeats agree; "~" otherwise."""
    n = len(cell.ratios)
    if n < MIN_CLEAN:
        return "~"
    if cell.ratio > 1 + band and sum(r > 1 for r in cell.ratios) >= AGREE * n:
        return "better" if higher_is_better else "worse"
    if cell.ratio < 1 - band and sum(r < 1 for r in cell.ratios) >= AGREE * n:
        return "worse" if higher_is_better else "better"
    return "~"


def pool(reports: list[dict]) -> dict:
    """Saved runs of the same variants (names, commits, flags) and shapes as one, their repeats numbered on: the
    ratios are paired within a repeat, so runs at different times pool; the absolute medians mix their states."""
    first = reports[0]
    same = [(v["name"], v["commit"], v["flags"]) for v in first["variants"]]
    passes, offset, dates = [], 0, []
    for report in reports:
        if [(v["name"], v["commit"], v["flags"]) for v in report["variants"]] != same:
            raise SystemExit("runs of different revisions or flags cannot be pooled")
        if report["shapes"] != first["shapes"]:
            raise SystemExit("runs of different shapes cannot be pooled")
        passes += [{**p, "repeat": p["repeat"] + offset} for p in report["passes"]]
        offset += report["plan"]["repeats"]
        dates.append(report["machine"]["date"])
    plan = {**first["plan"], "repeats": offset}
    machine = {**first["machine"], "date": " and ".join(dates)}
    pooled = {**first, "plan": plan, "machine": machine, "passes": passes, "load_after": reports[-1]["load_after"]}
    return {**pooled, "runs": sum(report.get("runs", 1) for report in reports)}


def finish(report: dict) -> dict:
    """The report's table and noise bands, from its passes (also for a saved report: --summarize)."""
    names = [v["name"] for v in report["variants"]]
    shapes = [s for s in SHAPES if s.key in report["shapes"]]
    control = next((name for name in names if name.endswith(" A/A")), None)
    table, noise = summarize(report["passes"], names, shapes, control)
    report["table"] = {
        n: {s: {m: asdict(c) for m, c in row.items()} for s, row in rows.items()} for n, rows in table.items()
    }
    report["noise"] = noise
    return report


# ---------------------------------------------------------------- report


def fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def markdown(report: dict) -> str:
    facts, variants, shapes = report["machine"], report["variants"], [s for s in SHAPES if s.key in report["shapes"]]
    table, noise, passes = report["table"], report["noise"], report["passes"]
    names = [v["name"] for v in variants]
    base = names[0]
    repeats = report["plan"]["repeats"]
    lines = [
        "# Revisions side by side",
        "",
        f"{facts['date']}; {facts['cpu']}, {facts['usable_cores']} usable cores; onnxruntime {facts['onnxruntime']}, "
        f"grpcio {facts['grpcio']}, Python {facts['python']} (one virtual environment for every revision). "
        f"`python -m bench.revisions`: {MODEL} alone, each revision's own server (default workers and threads) and "
        f"Envoy configuration, started before any pass; {report['plan']['repeats']} repeat(s)"
        + (f" ({report['runs']} runs pooled)" if report.get("runs", 1) > 1 else "")
        + ", shapes interleaved "
        "across revisions (order rotated every repeat), every pass after a wait for a quiet machine. A pass during "
        f"which other processes used more than {DISTURBED_CORES} cores counts as disturbed and is left out (with "
        f"its pair) while {MIN_CLEAN} repeats remain. Figures: medians over the repeats; `x{base}`: the median of the "
        f"per-repeat ratios to `{base}`'s pass of the same repeat (latency: below 1 is faster; throughput: above 1 "
        "is faster), with their range and the pairs counted in brackets; **better** / **worse**: beyond the noise "
        f"band, ±{noise * 100:.0f}% in this run (the largest distance from 1 of the A/A control's median ratio in "
        f"any row: two servers of the same code; at least {MIN_NOISE:.0%}, {DEFAULT_NOISE:.0%} without a control), "
        f"with {AGREE:.0%} of the pairs agreeing.",
        "",
        "| revision | commit | server flags | model repository |",
        "|---|---|---|---|",
    ]
    for v in variants:
        flags = " ".join(v["flags"]) or "defaults"
        lines.append(f"| {v['name']} | `{v['commit'][:7]}` {v['subject'][:60]} | `{flags}` | {v['model_note']} |")
    header = "| shape | metric | " + " | ".join(names) + " |"
    lines += ["", header, "|---|---|" + "---:|" * len(names)]
    for shape in shapes:
        for metric in (*shape.metrics, "server_ms"):
            unit = UNITS.get(metric, "server CPU ms/call")
            row = [shape.title if metric == shape.metrics[0] else "", unit]
            for name in names:
                cell = table[name][shape.key][metric]
                text = fmt(cell["median"])
                if name != base:
                    low, high = min(cell["ratios"]), max(cell["ratios"])
                    text += f" ({cell['ratio']:.2f}x [{low:.2f}-{high:.2f}; {cell['clean']}/{repeats}])"
                    if cell["verdict"] in ("better", "worse"):
                        text += f" **{cell['verdict']}**"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
    load = [median([p["other_cores"] for p in passes if p["variant"] == name]) for name in names]
    lines.append("| other processes' CPU during the passes | cores, median | " + " | ".join(f"{x:.2f}" for x in load))
    lines[-1] += " |"
    others = [p["other_cores"] for p in passes]
    waits = [p["waited_s"] for p in passes]
    gave_up = sum(w >= report["plan"]["quiet_wait_s"] - 0.5 for w in waits)
    tokens = {p["shape"]: p["tokens_per_call"] for p in passes}
    lines += [
        "",
        f"Load on the machine (other processes' CPU while a pass ran, in cores): median {median(others):.2f}, "
        f"max {max(others):.2f}; load average {report['load_before']} before, {report['load_after']} after; "
        f"{gave_up} of {len(passes)} passes found no quiet machine within {report['plan']['quiet_wait_s']:.0f} s and "
        "ran anyway. The long text: " + (f"{tokens['d']:.0f} tokens a call." if "d" in tokens else "not run."),
        "",
        f"Machine: {facts}",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.revisions", description=__doc__.split("\n")[0])
    parser.add_argument("--rev", action="append", metavar="NAME=REV", help="the first: the baseline")
    parser.add_argument("--quick", action="store_true", help="one short repeat (to check the set-up)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--model-repo", type=Path, default=ROOT / "models", help="tried first for every revision")
    parser.add_argument("--no-rest", action="store_true", help="gRPC only (no Envoy)")
    parser.add_argument("--no-control", action="store_true", help="no second server of the baseline (A/A)")
    parser.add_argument("--no-defaults", action="store_true", help="no extra column of a revision with its defaults")
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="seconds a pass waits for a quiet machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="leave the worktrees and logs (printed) for debugging")
    parser.add_argument(
        "--summarize", type=Path, nargs="+", metavar="JSON", help="only re-render saved runs (several: pooled)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        report = finish(pool([json.loads(path.read_text()) for path in args.summarize]))
        write_report("revisions", markdown(report), report, args.out)
        return 0
    if not args.rev:
        raise SystemExit("--rev NAME=REV is required (twice at least)")
    revs = []
    for spec in args.rev:
        name, sep, rev = spec.partition("=")
        if not sep or not name or not rev:
            raise SystemExit(f"--rev {spec!r}: expected NAME=REV")
        revs.append((name, rev, git("rev-parse", "--verify", f"{rev}^{{commit}}")))
    plan = Plan(args.repeats or (1 if args.quick else 7), args.quick, not args.no_rest, args.quiet_wait)
    work = Path(tempfile.mkdtemp(prefix="embed-revisions-"))
    logs = work / "logs"
    logs.mkdir()
    trees: dict[str, Tree] = {}
    variants: list[Variant] = []
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        for name, rev, commit in revs:
            if commit not in trees:
                trees[commit] = checkout(commit, work)
            tree = trees[commit]
            flags = tree.comparable_flags()
            variants.append(Variant(name, rev, tree, flags))
            if not variants[1:] and not args.no_control:
                variants.append(Variant(f"{name} A/A", rev, tree, flags))
            if flags and not args.no_defaults:
                variants.append(Variant(f"{name} defaults", rev, tree, []))
        for variant in variants:
            print(f"starting {variant.name} ({variant.tree.short} {' '.join(variant.flags)})", file=sys.stderr)
            variant.start(args.model_repo.resolve(), logs)
            if plan.rest:
                variant.start_envoy(logs)
        texts = Texts(variants[0].tree.model_repo / MODEL / "tokenizer.json")
        results = run(measure(variants, plan, texts))
    finally:
        for variant in variants:
            variant.stop(logs)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree.path)], cwd=ROOT, check=False)
            git("worktree", "prune")
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "machine": machine_facts(),
        "plan": asdict(plan),
        "shapes": [s.key for s in plan.shapes()],
        "variants": [
            {
                "name": v.name,
                "rev": v.rev,
                "commit": v.tree.commit,
                "subject": v.tree.subject,
                "flags": v.flags,
                "model_note": v.tree.model_note,
            }
            for v in variants
        ],
        "passes": [asdict(r) for r in results],
        "load_before": load_before,
        "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    report = finish(report)
    write_report("revisions", markdown(report), report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
