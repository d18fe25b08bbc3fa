"""`embeddings` (or `python -m embeddings_client`): embed a file of texts over gRPC, list models, manage async jobs.

Small files are embedded synchronously in batches (EmbeddingService.Embed) with a progress bar; files above
`--async-threshold` inputs become an async job (JobService.AsyncEmbed) whose progress is followed until it is done,
then its results are paged into the output. Ctrl-C while a job runs leaves the job running and says how to pick it
up again (`jobs show ID`, `jobs results ID --output FILE`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from embeddings.v1 import embeddings_pb2, embeddings_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from google.protobuf import json_format, struct_pb2
from tqdm import tqdm

from embeddings_client.io import VectorWriter, check_output, read_texts

DEFAULT_ADDRESS = "127.0.0.1:50051"
FINISHED = ("completed", "failed", "cancelled")
INTERRUPTED = 130  # the shell's code for SIGINT


@dataclass(frozen=True)
class Connection:
    """Stubs on one channel, and the call metadata (the API key) every call carries."""

    embeddings: embeddings_pb2_grpc.EmbeddingServiceStub
    jobs: jobs_pb2_grpc.JobServiceStub
    metadata: tuple[tuple[str, str], ...]
    timeout: float


def connect(address: str, api_key: str | None, timeout: float) -> Connection:
    limit = 256 * 1024 * 1024
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return Connection(
        embeddings_pb2_grpc.EmbeddingServiceStub(channel), jobs_pb2_grpc.JobServiceStub(channel), metadata, timeout
    )


def progress(total: int, unit: str, desc: str) -> tqdm:
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.2)


# --- embed ------------------------------------------------------------------------------------------------------


def embed_sync(conn: Connection, texts: Sequence[str], args: argparse.Namespace) -> None:
    writer = VectorWriter(Path(args.output), len(texts))
    try:
        with progress(len(texts), "text", "embedding") as bar:
            for start in range(0, len(texts), args.batch_size):
                request = embeddings_pb2.EmbedRequest(
                    model=args.model,
                    inputs=texts[start : start + args.batch_size],
                    truncate=args.truncate,
                    encoding_format=embeddings_pb2.ENCODING_FORMAT_BYTES,
                )
                response = conn.embeddings.Embed(request, metadata=conn.metadata, timeout=conn.timeout)
                rows = np.stack([np.frombuffer(e.data, dtype="<f4") for e in response.embeddings])
                writer.write(rows)
                bar.update(len(rows))
    finally:
        writer.close()
    print(f"wrote {writer.written} vectors to {args.output}", file=sys.stderr)


def submit_job(conn: Connection, texts: Sequence[str], args: argparse.Namespace) -> jobs_pb2.Job:
    values = struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value=t) for t in texts]))
    request = jobs_pb2.AsyncEmbedRequest(
        model=args.model,
        input=values,
        encoding_format="base64",
        metadata={"source": Path(args.file).name},
    )
    if args.truncate:
        request.truncate = True
    return conn.jobs.AsyncEmbed(request, metadata=conn.metadata, timeout=max(conn.timeout, 600))


def follow_job(conn: Connection, job_id: str, poll_s: float) -> jobs_pb2.Job:
    """Show the job's progress until it finishes."""
    job = conn.jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=conn.metadata, timeout=conn.timeout)
    with progress(job.progress.total, "text", f"job {job_id}") as bar:
        while True:
            bar.update(job.progress.completed - bar.n)
            bar.set_postfix_str(job.status)
            if job.status in FINISHED:
                return job
            time.sleep(poll_s)
            job = conn.jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=conn.metadata, timeout=conn.timeout)


def write_results(conn: Connection, job: jobs_pb2.Job, output: str, page_size: int) -> int:
    """Page a completed job's vectors into `output`; returns how many were written."""
    writer = VectorWriter(Path(output), job.progress.total)
    offset, has_more = 0, True
    try:
        with progress(job.progress.total, "vector", "results") as bar:
            while has_more:
                request = jobs_pb2.GetJobResultsRequest(id=job.id, offset=offset, limit=page_size)
                body = conn.jobs.GetJobResults(request, metadata=conn.metadata, timeout=conn.timeout)
                page = json.loads(body.data)
                rows = np.stack([_vector(item["embedding"]) for item in page["data"]])
                writer.write(rows)
                bar.update(len(rows))
                offset, has_more = offset + len(rows), bool(page["has_more"])
    finally:
        writer.close()
    return writer.written


def _vector(embedding: str | list[float]) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def resume_hint(job_id: str, output: str | None) -> str:
    target = output or "OUT.npy"
    return (
        f"job {job_id} keeps running on the server. Follow it with `embeddings jobs show {job_id}`; "
        f"once completed, fetch it with `embeddings jobs results {job_id} --output {target}`."
    )


def embed_async(conn: Connection, texts: Sequence[str], args: argparse.Namespace) -> int:
    job = submit_job(conn, texts, args)
    print(f"{len(texts)} inputs: submitted async job {job.id}", file=sys.stderr)
    try:
        job = follow_job(conn, job.id, args.poll_interval)
        if job.status != "completed":
            print(f"job {job.id} {job.status}: {job.error.message or 'no results'}", file=sys.stderr)
            return 1
        written = write_results(conn, job, args.output, args.page_size)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {resume_hint(job.id, args.output)}", file=sys.stderr)
        return INTERRUPTED
    print(f"wrote {written} vectors to {args.output} (job {job.id})", file=sys.stderr)
    return 0


def cmd_embed(conn: Connection, args: argparse.Namespace) -> int:
    check_output(Path(args.output))
    texts = read_texts(Path(args.file))
    if len(texts) > args.async_threshold:
        return embed_async(conn, texts, args)
    try:
        embed_sync(conn, texts, args)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was kept (synchronous calls run only while the client waits)", file=sys.stderr)
        return INTERRUPTED
    return 0


# --- models and jobs --------------------------------------------------------------------------------------------


def cmd_models(conn: Connection, args: argparse.Namespace) -> int:
    response = conn.embeddings.ListModels(
        embeddings_pb2.ListModelsRequest(), metadata=conn.metadata, timeout=conn.timeout
    )
    print(f"{'id':40} {'dims':>5} {'max tokens':>10}  aliases")
    for model in response.data:
        print(f"{model.id:40} {model.dimensions:>5} {model.max_input_tokens:>10}  {', '.join(model.aliases)}")
    return 0


def _job_json(job: jobs_pb2.Job) -> str:
    return json.dumps(json_format.MessageToDict(job, preserving_proto_field_name=True), indent=2)


def cmd_jobs_list(conn: Connection, args: argparse.Namespace) -> int:
    request = jobs_pb2.ListJobsRequest(limit=args.limit, after=args.after or "")
    page = conn.jobs.ListJobs(request, metadata=conn.metadata, timeout=conn.timeout)
    print(f"{'id':30} {'status':12} {'progress':>17}  model")
    for job in page.data:
        done = f"{job.progress.completed}/{job.progress.total}"
        print(f"{job.id:30} {job.status:12} {done:>17}  {job.model}")
    if page.has_more:
        print(f"(more: --after {page.last_id})")
    return 0


def cmd_jobs_show(conn: Connection, args: argparse.Namespace) -> int:
    job = conn.jobs.GetJob(jobs_pb2.GetJobRequest(id=args.id), metadata=conn.metadata, timeout=conn.timeout)
    print(_job_json(job))
    return 0


def cmd_jobs_cancel(conn: Connection, args: argparse.Namespace) -> int:
    job = conn.jobs.CancelJob(jobs_pb2.CancelJobRequest(id=args.id), metadata=conn.metadata, timeout=conn.timeout)
    print(f"job {job.id}: {job.status}")
    return 0


def cmd_jobs_results(conn: Connection, args: argparse.Namespace) -> int:
    check_output(Path(args.output))
    job = conn.jobs.GetJob(jobs_pb2.GetJobRequest(id=args.id), metadata=conn.metadata, timeout=conn.timeout)
    if job.status != "completed":
        print(f"job {job.id} is {job.status} ({job.progress.completed}/{job.progress.total})", file=sys.stderr)
        return 1
    try:
        written = write_results(conn, job, args.output, args.page_size)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run `embeddings jobs results {job.id} --output {args.output}` again", file=sys.stderr)
        return INTERRUPTED
    print(f"wrote {written} vectors to {args.output}", file=sys.stderr)
    return 0


# --- command line -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embeddings", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("EMBEDDINGS_ADDRESS", DEFAULT_ADDRESS))
    parser.add_argument("--api-key", default=os.environ.get("EMBEDDINGS_API_KEY"), help="or EMBEDDINGS_API_KEY")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed a file: text lines, or JSONL with a 'text' field")
    embed.add_argument("file")
    embed.add_argument("--model", default="all-minilm-l6-v2")
    embed.add_argument("--output", "-o", required=True, help="out.npy or out.jsonl")
    embed.add_argument("--batch-size", type=int, default=64, help="inputs per call (synchronous mode)")
    embed.add_argument("--async-threshold", type=int, default=10_000, help="more inputs than this: an async job")
    embed.add_argument("--truncate", action="store_true", help="cut over-long inputs instead of failing")
    embed.add_argument("--poll-interval", type=float, default=0.5, help="seconds between job progress checks")
    embed.add_argument("--page-size", type=int, default=1000, help="vectors per results page")
    embed.set_defaults(run=cmd_embed)

    commands.add_parser("models", help="list the served models").set_defaults(run=cmd_models)

    jobs = commands.add_parser("jobs", help="async jobs").add_subparsers(dest="jobs_command", required=True)
    listing = jobs.add_parser("list", help="newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--after", help="last job id of the previous page")
    listing.set_defaults(run=cmd_jobs_list)
    for name, run, text in (("show", cmd_jobs_show, "status and progress"), ("cancel", cmd_jobs_cancel, "stop it")):
        command = jobs.add_parser(name, help=text)
        command.add_argument("id")
        command.set_defaults(run=run)
    results = jobs.add_parser("results", help="write a completed job's vectors")
    results.add_argument("id")
    results.add_argument("--output", "-o", required=True, help="out.npy or out.jsonl")
    results.add_argument("--page-size", type=int, default=1000)
    results.set_defaults(run=cmd_jobs_results)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[Connection, argparse.Namespace], int] = args.run
    conn = connect(args.address, args.api_key, args.timeout)
    try:
        return run(conn, args)
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED
