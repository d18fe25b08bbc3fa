"""What the suite measures: how much (the plan), the load shapes, the names of runs, and the result the report is
made of. Shared by bench.suite (measuring) and bench.suite_report (reporting)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from bench.common import BASELINE_CONFIGS, BaselineConfig, Run, Summary, summarize
from bench.soak import SoakResult

FP32 = "all-minilm-l6-v2"
INT8 = "all-minilm-l6-v2-int8"
ST_BATCH_SIZES = (64, 32)


@dataclass(frozen=True)
class Plan:
    """How much to run: the full suite (~15 minutes) or --quick (a smoke test of every piece, ~3 minutes)."""

    repeats: int = 3
    # Texts of each set timed per pass (None: all); Spearman and vector checks always use every STS-B pair.
    stsb_limit: int | None = None
    long_limit: int | None = None
    # Requests of one input are capped so that such a cell takes a few seconds: (one client, more clients).
    single_input_requests: tuple[int, int] = (400, 1000)
    soak_s: float = 300.0
    soak_warmup_s: float = 30.0
    soak_interval_s: float = 5.0
    max_quiet_wait_s: float = 30.0


QUICK = Plan(
    repeats=1,
    stsb_limit=512,
    long_limit=48,
    single_input_requests=(100, 300),
    soak_s=20.0,
    soak_warmup_s=5.0,
)


@dataclass(frozen=True)
class Cell:
    """One load shape against the service: path, vector encoding, inputs per request, concurrent clients."""

    path: str  # "grpc" or "rest"
    encoding: str  # grpc: "float" / "bytes"; rest: "base64" / "float"
    inputs: int
    clients: int
    data: str = "stsb"
    model: str = FP32

    @property
    def name(self) -> str:
        return label(f"{self.path} {self.encoding} {self.inputs}/req c={self.clients}", self.data, self.model)


def label(base: str, data: str = "stsb", model: str = FP32) -> str:
    """Run names: the short set and fp32 are the default and go unnamed."""
    return base + (f" {data}" if data != "stsb" else "") + (" int8" if model == INT8 else "")


def service_cells() -> list[Cell]:
    """The grid (gRPC and REST base64; 1 input at 32 clients added), REST float at one point, long texts, int8."""
    cells = [
        Cell(path, encoding, inputs, clients)
        for path, encoding in (("grpc", "float"), ("rest", "base64"))
        for inputs in (1, 32, 256)
        for clients in ((1, 8, 32, 64) if inputs == 1 else (1, 8, 64))
    ]
    return [
        *cells,
        Cell("rest", "float", 32, 8),
        Cell("grpc", "float", 32, 8, data="long"),
        Cell("rest", "base64", 32, 8, data="long"),
        Cell("grpc", "float", 32, 8, model=INT8),
    ]


# In-process configurations timed per repeat, by (model, data set). On long texts a few of each kind (one session on
# both cores; batches in parallel): a pass costs 5-10 s. Batches of 8 are the service's own at 256 tokens (its
# 2048-token budget), and on long texts smaller batches are faster, so they are candidates for the limit too.
BASELINES: dict[tuple[str, str], tuple[BaselineConfig, ...]] = {
    (FP32, "stsb"): BASELINE_CONFIGS,
    (FP32, "long"): (BaselineConfig(32), BaselineConfig(16, 2), BaselineConfig(8), BaselineConfig(8, 2)),
    (INT8, "stsb"): BASELINE_CONFIGS,
}


@dataclass
class Checks:
    """Evidence that every path computes the same thing, and the models' quality."""

    max_vector_diff: dict[str, float] = field(default_factory=dict)
    stsb_spearman_x100: dict[str, float] = field(default_factory=dict)
    st_min_cosine: dict[str, float] = field(default_factory=dict)
    int8_min_cosine: dict[str, float] = field(default_factory=dict)


@dataclass
class Memory:
    """The main run's server after every repetition: resident now, and its peak since start (VmHWM)."""

    server_rss_mib: float
    server_peak_mib: float
    envoy_rss_mib: float


def st_name(batch_size: int) -> str:
    return f"sentence-transformers batch={batch_size}"


@dataclass
class SuiteResult:
    """What the report and chart are made of (and the JSON holds)."""

    facts: dict[str, object]
    plan: Plan
    sets: dict[str, dict[str, float]]
    cells: list[Cell]
    summary: Summary
    checks: Checks
    memory: Memory
    soak: SoakResult
    runs: list[Run]

    def limit(self, data: str = "stsb", model: str = FP32) -> tuple[str, float]:
        """The best in-process configuration on `data` and its median sentences/s."""
        names = [label(config.name, data, model) for config in BASELINES[model, data]]
        best = max(names, key=lambda name: self.summary[name]["sentences_per_s"])
        return best, self.summary[best]["sentences_per_s"]

    def rate(self, name: str) -> float:
        return self.summary[name]["sentences_per_s"]

    def ratio(self, name: str, data: str = "stsb") -> float:
        """Sentences/s of a run as a fraction of the fp32 in-process limit on the same data."""
        return self.rate(name) / self.limit(data)[1]

    def best_st(self) -> tuple[str, float]:
        best = max((st_name(b) for b in ST_BATCH_SIZES), key=self.rate)
        return best, self.rate(best)

    def to_json(self) -> dict[str, object]:
        return {
            "machine": self.facts,
            "plan": asdict(self.plan),
            "sets": self.sets,
            "limits": {data: self.limit(data) for data in ("stsb", "long")} | {"stsb int8": self.limit("stsb", INT8)},
            "ratios": {name: self.ratio(name, data_of(name)) for name in self.summary},
            "checks": asdict(self.checks),
            "memory": asdict(self.memory),
            "soak": self.soak.to_json(),
            "summary": self.summary,
            "runs": [asdict(r) for r in self.runs],
        }

    @classmethod
    def from_json(cls, raw: dict, cells: list[Cell]) -> SuiteResult:
        """The inverse of to_json (summaries are recomputed from the runs), to redraw a report without measuring."""
        runs = [Run(**r) for r in raw["runs"]]
        plan = raw["plan"] | {"single_input_requests": tuple(raw["plan"]["single_input_requests"])}
        soak_fields = {f.name for f in fields(SoakResult)}
        soak = SoakResult(**{k: v for k, v in raw["soak"].items() if k in soak_fields})
        soak.samples = [tuple(sample) for sample in soak.samples]
        return cls(
            facts=raw["machine"],
            plan=Plan(**plan),
            sets=raw["sets"],
            cells=cells,
            summary=summarize(runs),
            checks=Checks(**raw["checks"]),
            memory=Memory(**raw["memory"]),
            soak=soak,
            runs=runs,
        )


def data_of(name: str) -> str:
    return "long" if " long" in name else "stsb"
