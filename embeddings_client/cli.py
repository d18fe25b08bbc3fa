"""`embeddings` (or `python -m embeddings_client`): embed a file of texts, list models, manage async jobs.

Talks to the server at a URL: `grpc://host:50051` (or `host:port`) and `grpcs://` for gRPC, `http://host:8080` and
`https://` for the REST gateway's OpenAI-compatible routes. The API key comes from EMBEDDINGS_API_KEY.

Small files are embedded with synchronous calls (split to the server's limits) and a progress bar; files above
`--async-threshold` inputs become an async job whose progress is followed until it is done, then its results are
paged into the output. Ctrl-C while a job runs leaves the job running and says how to pick it up again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from embeddings_client.base import SyncClientBase
from embeddings_client.errors import EmbeddingsError
from embeddings_client.io import Inputs, VectorWriter, check_output, read_inputs
from embeddings_client.rest import connect
from embeddings_client.retry import RetryPolicy
from embeddings_client.types import Job

DEFAULT_URL = "grpc://127.0.0.1:50051"
DEFAULT_MODEL = "all-minilm-l6-v2"
INTERRUPTED = 130  # the shell's code for SIGINT
SERVER_ERROR, USAGE_ERROR = 1, 2


def progress(total: int, unit: str, desc: str) -> tqdm:
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.2)


def say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def announce_retry(attempt: int, error: EmbeddingsError, wait_s: float) -> None:
    say(f"retrying in {wait_s:.1f} s (attempt {attempt} failed: {error})")


# --- embed ------------------------------------------------------------------------------------------------------


def embed_options(args: argparse.Namespace) -> dict:
    return {
        "model": args.model,
        "dimensions": args.dimensions,
        "normalize": args.normalize,
        "input_type": args.input_type,
        "truncate": args.truncate,
    }


def input_error(inputs: Inputs, err: EmbeddingsError) -> str:
    """The server's error about one input, naming the file line instead of the input's position."""
    if err.index is None:
        return f"error: {err}"
    message = re.sub(rf"\b[Ii]nput {err.index}\b", "this input", err.message)
    return f"{inputs.where(err.index)}: {message} [{err.code} {err.reason or ''}]".replace(" ]", "]")


def embed_sync(client: SyncClientBase, inputs: Inputs, args: argparse.Namespace) -> None:
    writer = VectorWriter(Path(args.output), inputs.rows, inputs.line_count)
    try:
        with progress(len(inputs.texts), "text", "embedding") as bar:
            for batch in client.iter_embed(inputs.texts, batch_size=args.batch_size, **embed_options(args)):
                writer.write(batch.vectors)
                bar.update(len(batch.vectors))
        writer.finish()
    except BaseException:
        writer.discard()  # no half-filled output
        raise
    say(wrote(writer, args.output))


def wrote(writer: VectorWriter, output: str) -> str:
    blank = writer.total_rows - len(writer.rows)
    if not blank:
        return f"wrote {writer.written} vectors to {output}"
    holes = "NaN rows" if output.endswith(".npy") else "no lines"
    return f"wrote {writer.written} vectors to {output} ({blank} skipped blank lines: {holes})"


def resume_hint(job_id: str, output: str | None) -> str:
    target = output or "OUT.npy"
    return (
        f"job {job_id} keeps running on the server. Follow it with `embeddings jobs show {job_id}`; "
        f"once completed, fetch it with `embeddings jobs results {job_id} --output {target}`."
    )


def follow_job(client: SyncClientBase, job: Job, poll_s: float) -> Job:
    """Show the job's progress until it finishes."""
    with progress(job.total, "text", f"job {job.id}") as bar:

        def show(state: Job) -> None:
            bar.update(state.completed - bar.n)
            bar.set_postfix_str(state.status)

        return client.wait_job(job.id, poll_interval_s=poll_s, on_progress=show)


def write_results(client: SyncClientBase, job: Job, writer: VectorWriter, page_size: int) -> int:
    """Page a completed job's vectors into `writer` and put the output in place; returns how many were written."""
    try:
        with progress(job.total, "vector", "results") as bar:
            for _, rows in client.iter_job_results(job.id, page_size=page_size):
                writer.write(rows)
                bar.update(len(rows))
        writer.finish()
    except BaseException:
        writer.discard()  # no half-filled output
        raise
    return writer.written


def embed_async(client: SyncClientBase, inputs: Inputs, args: argparse.Namespace) -> int:
    metadata = {"source": Path(args.file).name}
    try:
        job = client.submit_job(
            inputs.texts, metadata=metadata, timeout=max(client.timeout, 600), **embed_options(args)
        )
    except KeyboardInterrupt:
        say("\ninterrupted while submitting the job: it may exist on the server (`embeddings jobs list` shows it)")
        return INTERRUPTED
    try:  # from here on, Ctrl-C leaves the job running and says how to pick it up
        say(f"{len(inputs.texts)} inputs: submitted async job {job.id}")
        job = follow_job(client, job, args.poll_interval)
        if job.status != "completed":
            say(f"job {job.id} {job.status}: {job.error_message or 'no results'}")
            return SERVER_ERROR
        writer = VectorWriter(Path(args.output), inputs.rows, inputs.line_count)
        write_results(client, job, writer, args.page_size)
    except KeyboardInterrupt:
        say(f"\ninterrupted: {resume_hint(job.id, args.output)}")
        return INTERRUPTED
    say(f"{wrote(writer, args.output)} (job {job.id})")
    return 0


def cmd_embed(client: SyncClientBase, args: argparse.Namespace) -> int:
    check_output(Path(args.output))
    inputs = read_inputs(Path(args.file), skip_blank=args.skip_blank)
    if inputs.skipped:
        rows = "NaN rows" if args.output.endswith(".npy") else "no lines"
        listed = ", ".join(map(str, inputs.skipped[:20])) + (", ..." if len(inputs.skipped) > 20 else "")
        say(f"skipping {len(inputs.skipped)} blank lines ({rows} in the output): {listed}")
    try:
        if len(inputs.texts) > args.async_threshold:
            return embed_async(client, inputs, args)
        embed_sync(client, inputs, args)
    except EmbeddingsError as err:
        print(input_error(inputs, err), file=sys.stderr)
        return SERVER_ERROR
    except KeyboardInterrupt:
        say("\ninterrupted: no output was written (synchronous calls run only while the client waits)")
        return INTERRUPTED
    return 0


# --- models and jobs --------------------------------------------------------------------------------------------


def cmd_models(client: SyncClientBase, args: argparse.Namespace) -> int:
    models = client.models()
    print(f"{'id':40} {'dims':>5} {'max tokens':>10} {'max inputs':>10}  aliases")
    for model in models:
        limits = f"{model.dimensions:>5} {model.max_input_tokens:>10} {model.max_inputs_per_request:>10}"
        print(f"{model.id:40} {limits}  {', '.join(model.aliases)}")
    return 0


def cmd_jobs_list(client: SyncClientBase, args: argparse.Namespace) -> int:
    page = client.list_jobs(limit=args.limit, after=args.after)
    print(f"{'id':30} {'status':12} {'progress':>17}  model")
    for job in page.jobs:
        done = f"{job.completed}/{job.total}"
        print(f"{job.id:30} {job.status:12} {done:>17}  {job.model}")
    if page.has_more:
        print(f"(more: --after {page.last_id})")
    return 0


def cmd_jobs_show(client: SyncClientBase, args: argparse.Namespace) -> int:
    print(json.dumps(asdict(client.get_job(args.id)), indent=2))
    return 0


def cmd_jobs_cancel(client: SyncClientBase, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.id)
    print(f"job {job.id}: {job.status}")
    return 0


def cmd_jobs_results(client: SyncClientBase, args: argparse.Namespace) -> int:
    check_output(Path(args.output))
    job = client.get_job(args.id)
    if job.status != "completed":
        print(f"job {job.id} is {job.status} ({job.completed}/{job.total})", file=sys.stderr)
        return SERVER_ERROR
    if job.embedding_type != "float":  # its pages hold int8/uint8 values: read as float32 they would be garbage
        print(
            f"job {job.id} holds {job.embedding_type} vectors; this command writes float32 vectors: read them with "
            f"GET /v1/async/jobs/{job.id}/results",
            file=sys.stderr,
        )
        return SERVER_ERROR
    try:
        written = write_results(
            client, job, VectorWriter(Path(args.output), range(job.total), job.total), args.page_size
        )
    except KeyboardInterrupt:
        say(f"\ninterrupted: run `embeddings jobs results {job.id} --output {args.output}` again")
        return INTERRUPTED
    say(f"wrote {written} vectors to {args.output}")
    return 0


# --- command line -----------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--url",
        "--address",
        dest="url",
        metavar="URL",
        default=env("EMBEDDINGS_URL") or env("EMBEDDINGS_ADDRESS") or DEFAULT_URL,
        help="the server: grpc://HOST:PORT or HOST:PORT (gRPC), grpcs://HOST[:PORT] (gRPC over TLS), "
        "http(s)://HOST:PORT (the REST gateway); default $EMBEDDINGS_URL, else %(default)s",
    )
    parser.add_argument(
        "--api-key",
        default=env("EMBEDDINGS_API_KEY"),
        help="API key sent as 'authorization: Bearer'; default $EMBEDDINGS_API_KEY (prefer it: arguments are "
        "visible to other users of the machine)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with a HOST:PORT or grpc:// URL")
    parser.add_argument("--ca-cert", metavar="PEM", help="CA certificate(s) to trust (default: the system's)")
    parser.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS (with --client-key)")
    parser.add_argument("--client-key", metavar="PEM", help="private key of --client-cert")
    parser.add_argument(
        "--server-name", help="gRPC over TLS: the name the server's certificate must carry (default: the URL's host)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one call may take, retries included (default 300)"
    )
    parser.add_argument(
        "--retries", type=positive_int, default=5, help="attempts per call on UNAVAILABLE or rate limits (default 5)"
    )


def add_embed_command(commands) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed a file: one text per line, or JSONL with a 'text' field",
        description="Embed every line of FILE, in order: row i of the output is line i + 1 of the file.",
    )
    embed.add_argument("file", help="UTF-8 text, one input per line; or JSONL (.jsonl, or lines that are objects)")
    embed.add_argument("--model", default=DEFAULT_MODEL, help="model id or alias (default %(default)s)")
    embed.add_argument(
        "--output", "-o", required=True, help="out.npy (float32 [lines, dims]) or out.jsonl ({index, embedding})"
    )
    embed.add_argument(
        "--skip-blank",
        action="store_true",
        help="leave blank lines out instead of failing on them: they get a NaN row in .npy and no line in .jsonl, "
        "so row i stays line i + 1; the skipped lines are listed on stderr",
    )
    truncate = embed.add_mutually_exclusive_group()
    truncate.add_argument(
        "--truncate", action="store_true", default=None, help="cut inputs over the model's limit to the limit"
    )
    truncate.add_argument(
        "--no-truncate", dest="truncate", action="store_false", help="fail on inputs over the model's limit"
    )
    embed.add_argument("--dimensions", type=positive_int, help="shorten vectors (models that offer it)")
    normalize = embed.add_mutually_exclusive_group()
    normalize.add_argument(
        "--normalize", action="store_true", default=None, help="unit-length vectors (default: the model's)"
    )
    normalize.add_argument("--no-normalize", dest="normalize", action="store_false", help="raw pooled vectors")
    embed.add_argument("--input-type", choices=("query", "document"), help="prepend the model's query/document prefix")
    embed.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="inputs per call (default %(default)s; never more than the server accepts)",
    )
    embed.add_argument(
        "--async-threshold",
        type=int,
        default=10_000,
        help="more inputs than this become one async job on the server (default %(default)s)",
    )
    embed.add_argument(
        "--poll-interval", type=float, default=0.5, help="seconds between job progress checks (default %(default)s)"
    )
    embed.add_argument(
        "--page-size", type=positive_int, default=1000, help="vectors per job-results page (default %(default)s)"
    )
    embed.set_defaults(run=cmd_embed)


def add_jobs_commands(commands) -> None:
    jobs = commands.add_parser("jobs", help="async jobs: list, show, cancel, results").add_subparsers(
        dest="jobs_command", required=True, metavar="{list,show,cancel,results}"
    )
    listing = jobs.add_parser("list", help="jobs, newest first")
    listing.add_argument("--limit", type=positive_int, default=20, help="jobs per page, 1-100 (default 20)")
    listing.add_argument("--after", help="the last job id of the previous page")
    listing.set_defaults(run=cmd_jobs_list)
    show = jobs.add_parser("show", help="a job's status and progress, as JSON")
    show.add_argument("id", help="job id (job_...)")
    show.set_defaults(run=cmd_jobs_show)
    cancel = jobs.add_parser("cancel", help="stop a job")
    cancel.add_argument("id", help="job id (job_...)")
    cancel.set_defaults(run=cmd_jobs_cancel)
    results = jobs.add_parser("results", help="write a completed job's vectors, one row per job input")
    results.add_argument("id", help="job id (job_...)")
    results.add_argument("--output", "-o", required=True, help="out.npy or out.jsonl")
    results.add_argument(
        "--page-size", type=positive_int, default=1000, help="vectors per results page (default %(default)s)"
    )
    results.set_defaults(run=cmd_jobs_results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedgate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 done, 1 an error from the server, 2 a bad file or option, 130 interrupted.",
    )
    add_connection_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{embed,models,jobs}")
    add_embed_command(commands)
    commands.add_parser("models", help="list the served models and their limits").set_defaults(run=cmd_models)
    add_jobs_commands(commands)
    return parser


def open_client(args: argparse.Namespace) -> SyncClientBase:
    return connect(
        args.url,
        api_key=args.api_key,
        timeout=args.timeout,
        retry=RetryPolicy(max_attempts=args.retries, on_retry=announce_retry),
        tls=True if args.tls else None,
        root_certificates=args.ca_cert,
        client_certificate=args.client_cert,
        client_key=args.client_key,
        server_name=args.server_name,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[SyncClientBase, argparse.Namespace], int] = args.run
    try:
        with open_client(args) as client:
            return run(client, args)
    except EmbeddingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return SERVER_ERROR
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED
