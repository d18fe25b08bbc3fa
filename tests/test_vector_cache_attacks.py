"""The embedding cache attacked: by a careless operator (absurd settings), by whoever else writes to its Redis
prefix (garbage under valid key names), by a network that hangs or drops Redis mid-run, and by callers of other
tenants (across servers sharing a prefix, and through async jobs). Real server, real Envoy, real Redis.

What must hold: a bad setting stops the start with exit 2 and names itself; a value in Redis that cannot be the
model's vector is a miss (never a 500, never the wrong size, never evicting this process's entries); a Redis that
hangs or dies costs only its hits and never a call; one tenant never learns from the cache what another embedded.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from google.protobuf import struct_pb2

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from service.engine.cache import input_keys
from service.stores.redis_cache import MAX_PENDING_WRITES, RedisVectors
from tests.serving import ROOT, EnvoyProcess, ServerProcess, free_port
from tests.shared_stores import REDIS_URL, temp_redis_prefix
from tests.test_access import create_key, metadata, wait_for
from tests.test_observability import value
from tests.test_vector_cache import cached, embed_b64, scrape, tokens

FP32 = "all-minilm-l6-v2"
DIMS = 384


def fresh(label: str) -> str:
    return f"{label} {uuid.uuid4().hex} attacking the cache"


def shared_args(prefix: str, redis_url: str = REDIS_URL, timeout_s: str = "5") -> tuple[str, ...]:
    """A server with the shared tier at `redis_url` under `prefix`. The generous read deadline keeps a loaded test
    machine from turning a hit into a miss; the tests of a hanging Redis set the real one."""
    return ("--models", FP32, "--cache-shared", "true", "--redis-url", redis_url, "--cache-redis-prefix", prefix,
            "--cache-redis-timeout-s", timeout_s)  # fmt: skip


def grpc_embed(server: ServerProcess, texts: list[str], key: str | None = None) -> tuple[np.ndarray, int]:
    """The vectors of `texts` over gRPC, and how many inputs the cache served."""
    with grpc.insecure_channel(server.address) as channel:
        reply, call = pb_grpc.EmbeddingServiceStub(channel).Embed.with_call(
            pb.EmbedRequest(model=FP32, inputs=texts), metadata=metadata(key) if key else None, timeout=30
        )
    vectors = np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)
    return vectors, int(dict(call.trailing_metadata())["x-cached-inputs"])


def redis_names(client: redis.Redis, prefix: str) -> set[bytes]:
    return set(client.keys(f"{prefix}*"))


def new_name(client: redis.Redis, prefix: str, known: set[bytes]) -> bytes:
    """The one Redis key a call just wrote (in the background: waited for)."""
    found = wait_for(lambda: redis_names(client, prefix) - known)
    assert len(found) == 1, found
    return found.pop()


# --- settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("--cache-bytes", "-1"), "cache_bytes"),
        (("--cache-ttl-s", "0"), "cache_ttl_s"),
        (("--cache-ttl-s", "100000000000000000"), "cache_ttl_s"),  # Redis would refuse every write
        (("--cache-redis-timeout-s", "0", "--cache-shared", "true"), "cache_redis_timeout_s"),
        (("--cache-redis-timeout-s", "-1"), "cache_redis_timeout_s"),
        (("--cache-redis-timeout-s", "nan", "--cache-shared", "true"), "cache_redis_timeout_s"),
        (("--cache-scope", "bogus"), "cache_scope"),
        (("--cache-shared", "ture"), "cache_shared"),  # a typo is not "false"
    ],
)
def test_absurd_cache_settings_stop_the_start_with_exit_2(model_repo: Path, tmp_path: Path, args, names):
    command = [sys.executable, "-m", "service", "--model-repo", str(model_repo), "--models", FP32, "--port", "0",
               "--data-dir", str(tmp_path), *args]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "configuration error" in done.stderr and names in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "ready:" not in done.stderr


# --- keys ---------------------------------------------------------------------------------------------------------


def test_no_tenant_name_can_be_spelled_into_another_scope():
    """Tenant names are free text (an admin's): one holding a NUL and the bytes that follow it in another tenant's key
    must still get a key of its own."""
    item = tokens([101, 7592, 102])
    victim = input_keys(b"m" * 32, "tenant:acme", [item])[0]
    crafted_tail = "\0" + (0).to_bytes(4, "little").decode("latin-1")
    assert input_keys(b"m" * 32, "tenant:acme" + crafted_tail, [tokens([7592, 102])])[0] != victim
    assert input_keys(b"m" * 31, "mtenant:acme", [item])[0] != victim  # nor a model digest spelled into the scope


# --- garbage in the shared tier -------------------------------------------------------------------------------------

# What another program (or a hand with redis-cli) may leave under a valid key name, given the value the server wrote
# there (the key's 16 bytes, then the vector's) and another key's: each must be a miss.
KEY_BYTES = 16
POISONS = {
    "short": lambda good, other: good[:-4],
    "long": lambda good, other: good + good[-4:],
    "empty": lambda good, other: b"",
    "nan": lambda good, other: good[:KEY_BYTES] + np.full(DIMS, np.nan, dtype="<f4").tobytes(),
    "inf": lambda good, other: good[:-4] + np.array([np.inf], dtype="<f4").tobytes(),
    "huge": lambda good, other: good[:KEY_BYTES] + bytes(4 * 1024 * 1024),  # kept, it would evict this process's
    "bare vector": lambda good, other: good[KEY_BYTES:],  # a vector without the key it answers
    "another key's": lambda good, other: other,  # a valid value copied under the wrong name: another input's vector
}


def test_garbage_under_a_valid_key_name_is_a_miss(model_repo: Path, tmp_path: Path):
    with temp_redis_prefix() as prefix:
        client = redis.Redis.from_url(REDIS_URL)
        texts = {name: fresh(name) for name in (*POISONS, "wrong-type")}
        originals, names, known = {}, {}, set()
        with ServerProcess(model_repo, *shared_args(prefix)) as first:
            for name, text in texts.items():
                originals[name] = grpc_embed(first, [text])[0][0]
                names[name] = new_name(client, prefix, known)
                known.add(names[name])
        written = {name: client.get(names[name]) for name in texts}
        assert all(len(value) == KEY_BYTES + DIMS * 4 for value in written.values())
        for name, poison in POISONS.items():
            client.set(names[name], poison(written[name], written["wrong-type"]))
        client.delete(names["wrong-type"])
        client.rpush(names["wrong-type"], b"not a string")

        with ServerProcess(model_repo, *shared_args(prefix)) as second, EnvoyProcess(second.port, tmp_path) as envoy:
            for name, text in texts.items():  # a new process: only Redis could answer, and it holds garbage
                headers, got = embed_b64(envoy, "unused", [text])  # 200, never a 500 for a NaN stored
                assert cached(headers) == (0, 0), name
                assert np.array_equal(got[0], originals[name]), name
            samples = scrape(envoy, "unused")
            assert value(samples, "embeddings_cache_hits_total", model=FP32, tier="shared") == 0
            assert samples[("embeddings_cache_entries", frozenset())] == len(texts)  # the huge value was not kept
            for text in texts.values():
                assert cached(embed_b64(envoy, "unused", [text])[0]) == (1, 0)  # now this process's own entries
            # The entries embedded again overwrite the garbage in Redis (in the background), as first written.
            wait_for(lambda: {name: client.get(names[name]) for name in texts} == written)


# --- a Redis that hangs, dies, comes back ---------------------------------------------------------------------------


class BlackHole:
    """A TCP server that accepts connections and never answers: a hung Redis, or a firewall dropping its replies."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        for sock in (self._listener, *self._held):
            _shut(sock)
            sock.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def test_background_writes_to_a_hanging_redis_stay_bounded():
    """Writes piling up behind a Redis that never answers: at most MAX_PENDING_WRITES batches in flight, the rest
    dropped (not queued in memory), and a read still answers (misses) within its deadline."""
    with BlackHole() as hole:
        store = RedisVectors(f"redis://127.0.0.1:{hole.port}/0", "test:hole:", ttl_s=60, timeout_s=0.05)
        vector = bytes(DIMS * 4)
        for i in range(MAX_PENDING_WRITES * 4):
            store.put_many([(i.to_bytes(16, "little"), vector)] * 8)
        assert (store.pending_writes, store.dropped_writes) == (MAX_PENDING_WRITES, MAX_PENDING_WRITES * 3)
        assert await asyncio.wait_for(store.get_many([b"k" * 16]), timeout=10) == [None]
        await asyncio.wait_for(store.close(), timeout=10)  # the writes time out; closing does not hang
        assert store.pending_writes == 0


def test_a_hanging_redis_never_holds_up_a_call(model_repo: Path):
    with BlackHole() as hole, temp_redis_prefix() as prefix:
        url = f"redis://127.0.0.1:{hole.port}/0"
        with ServerProcess(model_repo, *shared_args(prefix, url, timeout_s="0.05")) as server:
            texts = [fresh(f"hung {i}") for i in range(3)]
            for text in texts:
                for repeat in range(2):  # grpc_embed's own deadline (30 s) fails the test if a call hangs
                    vectors, hits = grpc_embed(server, [text, text])
                    assert hits == 2 * repeat and vectors.shape == (2, DIMS)
            assert "embedding cache: Redis" in server.log


class RedisProxy:
    """A TCP relay to the real Redis on a fixed port that can be cut (every connection dropped, nothing listening:
    Redis died) and restored (Redis came back), and can hold Redis's replies back (`reply_delay_s`: a slow link)."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.port = free_port()
        self.reply_delay_s = 0.0
        self._target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def up(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def down(self) -> None:
        assert self._listener is not None
        with self._lock:
            for sock in (self._listener, *self._sockets):
                _shut(sock)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, replies), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.reply_delay_s:
                    time.sleep(self.reply_delay_s)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Shut a socket down (which, unlike close, wakes a thread blocked in its accept or recv)."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def redis_proxy() -> Iterator[RedisProxy]:
    proxy = RedisProxy()
    proxy.up()
    try:
        yield proxy
    finally:
        proxy.down()


def test_redis_dying_mid_run_costs_only_its_hits_and_coming_back_restores_them(model_repo: Path):
    with temp_redis_prefix() as prefix, redis_proxy() as proxy:
        client = redis.Redis.from_url(REDIS_URL)
        with ServerProcess(model_repo, *shared_args(prefix, proxy.url)) as server:
            before = fresh("before")
            original = grpc_embed(server, [before])[0]
            new_name(client, prefix, set())  # the shared tier works
            proxy.down()  # Redis dies: its connections reset, nothing listens
            during = fresh("during")
            assert grpc_embed(server, [during])[1] == 0
            again, hits = grpc_embed(server, [before])
            assert hits == 1 and np.array_equal(again, original)  # this process's tier still answers
            proxy.up()  # Redis is back: after its rest, the server writes to it again (new texts until one lands)
            known = redis_names(client, prefix)
            wait_for(lambda: grpc_embed(server, [fresh("after")]) and redis_names(client, prefix) - known, timeout=60)


# --- tenants -------------------------------------------------------------------------------------------------------


def async_embed(server: ServerProcess, key: str, text: str) -> None:
    """An async job of the key's tenant over `text`, waited for."""
    value = struct_pb2.Value()
    value.list_value.extend([text])
    with grpc.insecure_channel(server.address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job = stub.AsyncEmbed(
            rest_pb2.CreateEmbeddingRequest(model=FP32, input=value), metadata=metadata(key), timeout=60
        )
        wait_for(
            lambda: (
                stub.GetJob(jobs_pb2.GetJobRequest(id=job.id), metadata=metadata(key), timeout=30).status == "completed"
            ),
            timeout=120,
        )


def test_tenants_of_servers_sharing_a_prefix_and_jobs_never_see_each_others_entries(model_repo, tmp_path_factory):
    """Two servers (each its own key store) on one Redis prefix. What tenant acme embedded, on either server, by an
    interactive call or an async job, is a miss for globex; the same tenant name on the other server shares it (the
    tenant name is the namespace: deployments that must not share give each its own prefix, README)."""
    first_dir, second_dir = tmp_path_factory.mktemp("cache-a"), tmp_path_factory.mktemp("cache-b")
    acme = create_key(first_dir, "acme", "--tenant", "acme")
    globex, acme_elsewhere = (create_key(second_dir, "globex", "--tenant", "globex"),
                              create_key(second_dir, "acme", "--tenant", "acme"))  # fmt: skip
    with temp_redis_prefix() as prefix:
        client = redis.Redis.from_url(REDIS_URL)
        args = shared_args(prefix)
        with (
            ServerProcess(model_repo, *args, "--data-dir", str(first_dir)) as first,
            ServerProcess(model_repo, *args, "--data-dir", str(second_dir)) as second,
        ):
            interactive, by_job = fresh("acme's secret"), fresh("acme's job")
            original = grpc_embed(first, [interactive], acme)[0]
            known = {new_name(client, prefix, set())}
            async_embed(first, acme, by_job)
            new_name(client, prefix, known)
            for text in (interactive, by_job):
                assert grpc_embed(first, [text], acme)[1] == 1  # acme's own: a hit
                assert grpc_embed(second, [text], globex)[1] == 0  # never globex's
            got, hits = grpc_embed(second, [interactive], acme_elsewhere)
            assert hits == 1 and np.array_equal(got, original)


def test_a_reply_after_the_deadline_is_never_read_as_another_tenants(model_repo: Path, tmp_path_factory):
    """The classic failure of a client that gives up on a reply but keeps its connection: the late reply is read as
    the answer to the next command. Here the late reply holds acme's vector, and the next command is a lookup of
    globex's: it must be a miss with globex's own vector, never acme's."""
    data_dir = tmp_path_factory.mktemp("late-replies")
    acme, globex = (create_key(data_dir, name, "--tenant", name) for name in ("acme", "globex"))
    own_store = ("--data-dir", str(data_dir))
    with temp_redis_prefix() as prefix, redis_proxy() as proxy:
        client = redis.Redis.from_url(REDIS_URL)
        with ServerProcess(model_repo, *shared_args(prefix), *own_store) as direct:
            secret = fresh("acme's secret")
            grpc_embed(direct, [secret], acme)
            new_name(client, prefix, set())
            late = shared_args(prefix, proxy.url, timeout_s="0.2")
            with ServerProcess(model_repo, *late, *own_store) as behind:
                proxy.reply_delay_s = 1.0  # acme's vector comes back 0.8 s after the lookup gave up on it
                assert grpc_embed(behind, [secret], acme)[1] == 0
                proxy.reply_delay_s = 0.0
                known, asked = redis_names(client, prefix), {}

                def globex_lookup() -> set[bytes]:
                    text = fresh("globex")
                    asked[text], hits = grpc_embed(behind, [text], globex)
                    assert hits == 0, "a reply meant for another lookup was read as this one's"
                    return redis_names(client, prefix) - known  # the server talks to Redis again

                wait_for(globex_lookup, timeout=60)
            for text, got in asked.items():
                assert np.array_equal(got, grpc_embed(direct, [text], acme)[0])


def test_no_local_bytes_with_a_shared_tier_is_redis_alone(model_repo: Path, tmp_path: Path):
    """`cache_bytes 0` with `cache_shared`: nothing is kept in the process, Redis alone serves (README)."""
    with temp_redis_prefix() as prefix:
        client = redis.Redis.from_url(REDIS_URL)
        args = (*shared_args(prefix), "--cache-bytes", "0")
        with ServerProcess(model_repo, *args) as server, EnvoyProcess(server.port, tmp_path) as envoy:
            text = fresh("redis alone")
            headers, first = embed_b64(envoy, "unused", [text, text])
            assert cached(headers) == (0, 1)
            new_name(client, prefix, set())
            headers, again = embed_b64(envoy, "unused", [text])
            assert cached(headers) == (1, 0) and np.array_equal(again[0], first[0])
            samples = scrape(envoy, "unused")
            assert value(samples, "embeddings_cache_hits_total", model=FP32, tier="shared") == 1
            assert samples[("embeddings_cache_entries", frozenset())] == 0


def test_the_shared_tier_can_have_a_redis_of_its_own(model_repo: Path):
    """`cache_redis_url` names the cache's Redis apart from the rate limiter's `redis_url` (here: nothing there)."""
    with temp_redis_prefix() as prefix:
        client = redis.Redis.from_url(REDIS_URL)
        elsewhere = f"redis://127.0.0.1:{free_port()}/0"
        args = (*shared_args(prefix, redis_url=elsewhere), "--cache-redis-url", REDIS_URL)
        with ServerProcess(model_repo, *args) as server:
            grpc_embed(server, [fresh("own redis")])
            new_name(client, prefix, set())
            assert "embedding cache: Redis" not in server.log
