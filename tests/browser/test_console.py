"""The operator console (/console) and the API reference (/docs), driven in headless Chromium against the real server
and Envoy with API keys: what the pages show is checked against what the API answers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import numpy as np
import pytest
from openai import OpenAI
from playwright.sync_api import Page, expect

from service.jobs.webhooks import verify
from tests.browser.conftest import TINY_PRICE, Stack
from tests.serving import ROOT
from tests.test_webhooks import Receiver

FP32 = "all-minilm-l6-v2"
TINY = "tiny-bert"  # CLS-pooled, unnormalized, query/document prefixes, shortened sizes 8 and 16
SCREENSHOT_HEIGHT = 1500


# --- helpers ------------------------------------------------------------------------------------------------------


def sign_in(page: Page, stack: Stack, key: str) -> None:
    """Sign in with the keyboard, as an operator would: type the key, press Enter."""
    page.goto(f"{stack.url}/console")
    field = page.get_by_label("API key")
    expect(field).to_be_focused()
    field.fill(stack.keys[key])
    field.press("Enter")
    expect(page.get_by_role("navigation", name="Console pages")).to_be_visible()


def open_page(page: Page, title: str, route: str) -> None:
    page.get_by_role("navigation", name="Console pages").get_by_role("link", name=title).click()
    expect(page.locator(f'.page[data-page="{route}"]')).to_have_attribute("aria-busy", "false")
    expect(page.get_by_role("heading", level=1)).to_have_text(title)


def snapshot(page: Page, folder: Path | None, name: str) -> None:
    """A README screenshot (only with EMBED_CONSOLE_SCREENSHOTS): the page's top, in a small palette PNG."""
    if folder is None:
        return
    from PIL import Image

    path = folder / f"{name}.png"
    height = min(SCREENSHOT_HEIGHT, page.evaluate("document.documentElement.scrollHeight"))
    page.screenshot(path=path, full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": height})
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def client(stack: Stack, key: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.url}/v1", api_key=stack.keys.get(key, key), max_retries=0)


def rest(stack: Stack, method: str, path: str, token: str, body: dict | None = None) -> httpx2.Response:
    return httpx2.request(
        method, f"{stack.url}{path}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=120
    )


def cosines(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T


def shown_matrix(page: Page, n: int) -> np.ndarray:
    cells = page.locator("table.heatmap td.sim")
    expect(cells).to_have_count(n * n)
    values = [float(v) for v in cells.evaluate_all("cells => cells.map((c) => c.dataset.value)")]
    return np.array(values).reshape(n, n)


def fill_texts(page: Page, texts: list[str]) -> None:
    boxes = page.get_by_role("textbox", name=re.compile(r"^Text \d+$"))
    while boxes.count() > len(texts):
        page.get_by_role("button", name=f"Remove text {boxes.count()}").click()
    while boxes.count() < len(texts):
        page.get_by_role("button", name="Add a text").click()
    for i, text in enumerate(texts):
        boxes.nth(i).fill(text)


def snippet(page: Page, language: str) -> str:
    page.get_by_role("tab", name=language).click()
    return page.get_by_role("tabpanel", name=language).locator("pre").inner_text()


def wait_for(predicate, what: str, attempts: int = 600):
    """Poll a state of the server (not the page) until it holds; each attempt is one request."""
    for _ in range(attempts):
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached")


# --- the console --------------------------------------------------------------------------------------------------


def test_sign_in_with_a_wrong_key_is_refused_readably(page, stack):
    page.goto(f"{stack.url}/console")
    page.get_by_label("API key").fill("sk-000000000000-" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Your API key was not accepted")
    expect(alert).to_contain_text("Incorrect API key provided: sk-000***xxxx")
    expect(page.get_by_role("navigation", name="Console pages")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_models_page_lists_what_the_api_lists(page, stack, screenshots):
    sign_in(page, stack, "admin")
    expect(page.get_by_role("heading", level=1)).to_have_text("Models")
    listed = client(stack, "admin").models.list().data
    rows = page.locator("tr[data-model]")
    expect(rows).to_have_count(len(listed))
    for model in listed:
        row = page.locator(f'tr[data-model="{model.id}"]')
        expect(row).to_contain_text(str(model.model_extra["dimensions"]))
        expect(row).to_contain_text(str(model.model_extra["max_input_tokens"]))
        for alias in model.model_extra["aliases"]:
            expect(row).to_contain_text(alias)
    tiny = page.locator(f'tr[data-model="{TINY}"]')
    expect(tiny).to_contain_text("also 8, 16")
    expect(tiny).to_contain_text('query: "query: "')
    snapshot(page, screenshots, "models")
    fp32 = next(m for m in listed if m.id == FP32).model_extra["provenance"]
    provenance = page.locator(f'tr[data-model="{FP32}"] details')
    provenance.locator("summary").click()
    expect(provenance.locator("dt")).to_have_text(sorted(fp32))
    # Provenance is a JSON object: strings show as they are, nested values as their JSON.
    expect(provenance.locator("dd")).to_have_count(len(fp32))
    shown = provenance.locator("dd").all_inner_texts()
    assert [
        text if isinstance(fp32[name], str) else json.loads(text)
        for name, text in zip(sorted(fp32), shown, strict=True)
    ] == [fp32[name] for name in sorted(fp32)]
    # The key is only in this tab's session storage.
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.getItem('embeddings.apiKey')") == stack.keys["admin"]
    assert page.context.cookies() == []


def test_playground_similarity_equals_the_apis(page, stack, screenshots):
    sign_in(page, stack, "user")
    open_page(page, "Playground", "playground")
    texts = ["A cat sits on the mat.", "A kitten rests on a small rug.", "Stock markets fell sharply today."]
    fill_texts(page, texts)
    page.get_by_label("Model").select_option(FP32)
    page.get_by_label("Encoding").select_option("base64")
    page.get_by_role("button", name="Embed", exact=True).click()
    shown = shown_matrix(page, 3)
    # The openai SDK asks for base64 and decodes float32: the same numbers the page decoded.
    answer = client(stack, "user").embeddings.create(model=FP32, input=texts)
    expected = cosines(np.array([d.embedding for d in answer.data], dtype=np.float64))
    np.testing.assert_allclose(shown, expected, rtol=0, atol=1e-9)
    first = page.locator('td.sim[data-row="0"][data-col="1"]')
    expect(first).to_have_text(f"{expected[0, 1]:.4f}")
    expect(page.locator(".summary")).to_contain_text(f"{answer.usage.total_tokens} tokens")
    snapshot(page, screenshots, "playground")


def test_playground_options_and_snippets_run_as_shown(page, stack, tmp_path):
    """Every option reaches the API; the curl, Python and Node snippets run and answer the same vectors."""
    sign_in(page, stack, "user")
    page.goto(f"{stack.url}/console#/playground?model={TINY}")
    expect(page.get_by_label("Model")).to_have_value(TINY)
    texts = ["where is the station", "the station is north", "bananas are yellow", "trains leave hourly"]
    fill_texts(page, texts)
    page.get_by_label("Dimensions").select_option("16")
    page.get_by_label("Normalize").select_option("false")
    page.get_by_label("Input type").select_option("query")
    page.get_by_role("button", name="Embed", exact=True).click()
    shown = shown_matrix(page, 4)
    answer = client(stack, "user").embeddings.create(
        model=TINY, input=texts, dimensions=16, extra_body={"normalize": False, "input_type": "query"}
    )
    vectors = np.array([d.embedding for d in answer.data], dtype=np.float64)
    assert vectors.shape == (4, 16) and not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # options applied
    np.testing.assert_allclose(shown, cosines(vectors), rtol=0, atol=1e-9)

    env = {**os.environ, "EMBEDDINGS_API_KEY": stack.keys["user"]}
    curl = subprocess.run(["bash", "-c", snippet(page, "curl")], capture_output=True, text=True, env=env, timeout=60)
    assert curl.returncode == 0, curl.stderr
    by_curl = np.array([d["embedding"] for d in json.loads(curl.stdout)["data"]], dtype=np.float64)
    np.testing.assert_allclose(cosines(by_curl), cosines(vectors), rtol=0, atol=1e-6)

    python = subprocess.run(
        [sys.executable, "-c", snippet(page, "Python")], capture_output=True, text=True, env=env, timeout=60
    )
    assert python.returncode == 0, python.stderr
    assert [line.split()[0] for line in python.stdout.splitlines()] == ["0", "1", "2", "3"]

    node = shutil.which("node")
    modules = ROOT / "build" / "npm" / "node_modules"
    if node is None or not (modules / "openai").is_dir():
        pytest.skip("node or the npm openai package (make setup) is missing: the Node snippet was not run")
    (tmp_path / "node_modules").symlink_to(modules)
    (tmp_path / "embed.mjs").write_text(snippet(page, "Node"))
    ran = subprocess.run([node, "embed.mjs"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout.splitlines()) == 4


def test_admin_creates_rotates_and_revokes_a_key(page, stack, screenshots):
    sign_in(page, stack, "admin")
    open_page(page, "Keys and tenants", "keys")
    snapshot(page, screenshots, "keys")
    form = page.get_by_role("form", name="Create a key")
    form.get_by_label("Tenant").fill("browser")
    form.get_by_label("Name").fill("made-in-browser")
    form.get_by_label("Requests per minute").fill("600")
    form.get_by_role("button", name="Create key").click()

    panel = page.get_by_role("region", name=re.compile(r"^New key"))
    token = panel.get_by_label("Secret").input_value()
    key_id = token.split("-")[1]
    assert rest(stack, "GET", "/v1/models", token).status_code == 200
    row = page.locator(f'tr[data-key-id="{key_id}"]')
    cells = ["browser", "made-in-browser", "user", "all", "600", "server default"]
    expect(row.get_by_role("cell")).to_contain_text(cells)
    panel.get_by_role("button", name="Done").click()
    expect(panel).to_have_count(0)
    assert token.split("-")[2] not in page.content()  # shown once: gone from the page

    row.get_by_role("button", name=f"Rotate key {key_id}").click()
    page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
    rotated = page.get_by_role("region", name=f"New secret of key {key_id}").get_by_label("Secret").input_value()
    assert rotated != token and rotated.split("-")[1] == key_id
    assert rest(stack, "GET", "/v1/models", token).status_code == 401
    assert rest(stack, "GET", "/v1/models", rotated).status_code == 200

    row.get_by_role("button", name=f"Revoke key {key_id}").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    refused = rest(stack, "GET", "/v1/models", rotated)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_admin_sets_tenant_limits_that_apply(page, stack):
    sign_in(page, stack, "admin")
    open_page(page, "Keys and tenants", "keys")
    form = page.get_by_role("form", name="Set tenant limits")
    form.get_by_label("Tenant").fill("limited-in-browser")
    form.get_by_label("Requests per minute").fill("7")
    form.get_by_role("button", name="Set limits").click()
    expect(form.get_by_role("status")).to_have_text(
        "Tenant limited-in-browser: 7 requests per minute, server default tokens per minute."
    )
    created = rest(stack, "POST", "/v1/admin/keys", stack.keys["admin"], {"tenant": "limited-in-browser"}).json()
    answer = rest(stack, "POST", "/v1/embeddings", created["token"], {"model": FP32, "input": "hi"})
    assert answer.status_code == 200 and answer.headers["x-ratelimit-limit-requests"] == "7"


def test_job_progress_reaches_100_and_results_download(page, stack):
    sign_in(page, stack, "user")
    open_page(page, "Jobs and webhooks", "jobs")
    texts = [f"document {i} about the console" for i in range(480)]  # 30 chunks of 16
    job = rest(stack, "POST", "/v1/async/embeddings", stack.keys["user"], {"model": FP32, "input": texts}).json()
    row = page.locator(f'tr[data-id="{job["id"]}"]')  # appears by the page's own polling
    bar = row.get_by_role("progressbar", name=f"Progress of job {job['id']}")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=180_000)
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text("480 / 480 (100%)")

    with page.expect_download() as download:
        row.get_by_role("button", name=f"Download the results of job {job['id']}").click()
    lines = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(480))
    direct = client(stack, "user").embeddings.create(model=FP32, input=texts[:2])
    np.testing.assert_allclose(
        np.array([line["embedding"] for line in lines[:2]], dtype=np.float32),
        np.array([d.embedding for d in direct.data], dtype=np.float32),
        atol=1e-6,
    )


def test_cancel_a_running_job(page, stack):
    body = {"model": FP32, "input": [f"a long queue of short texts, number {i}" for i in range(40_000)]}
    job = rest(stack, "POST", "/v1/async/embeddings", stack.keys["user"], body).json()
    sign_in(page, stack, "user")
    open_page(page, "Jobs and webhooks", "jobs")
    row = page.locator(f'tr[data-id="{job["id"]}"]')
    row.get_by_role("button", name=f"Cancel job {job['id']}").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel job").click()
    expect(row).to_contain_text("cancelled")
    assert rest(stack, "GET", f"/v1/async/jobs/{job['id']}", stack.keys["user"]).json()["status"] == "cancelled"


def test_webhook_endpoint_and_its_deliveries(page, stack, screenshots):
    receiver = Receiver()
    try:
        sign_in(page, stack, "user")
        open_page(page, "Jobs and webhooks", "jobs")
        url = receiver.url("/status/204")
        form = page.get_by_role("form", name="Register a webhook endpoint")
        form.get_by_label("Endpoint URL").fill(url)
        form.get_by_label("Description").fill("indexer")
        form.get_by_role("button", name="Register endpoint").click()
        panel = page.get_by_role("region", name=f"Signing secret of {url}")
        secret = panel.get_by_label("Secret").input_value()
        assert secret.startswith("whsec_")
        panel.get_by_role("button", name="Done").click()

        hooks = rest(stack, "GET", "/v1/webhooks", stack.keys["user"]).json()["data"]
        webhook_id = next(w["id"] for w in hooks if w["url"] == url)
        body = {"model": FP32, "input": ["one", "two"], "metadata": {"webhook_id": webhook_id, "corpus": "docs-v2"}}
        job = rest(stack, "POST", "/v1/async/embeddings", stack.keys["user"], body).json()
        delivered = wait_for(lambda: receiver.received("/status/204"), "a delivery")
        assert verify(secret, delivered[0].headers, delivered[0].body)  # the secret the page showed signs it
        path = f"/v1/webhooks/{webhook_id}/deliveries"
        wait_for(lambda: rest(stack, "GET", path, stack.keys["user"]).json()["data"], "a recorded attempt")

        page.get_by_role("button", name=f"Deliveries to {url}").click()
        attempts = page.get_by_role("table", name="Delivery attempts, newest first")
        expect(attempts.get_by_role("row").nth(1)).to_contain_text("succeeded")
        expect(attempts.get_by_role("row").nth(1)).to_contain_text("204")
        expect(attempts).to_contain_text("embedding.job.completed")
        expect(page.locator(f'tr[data-id="{job["id"]}"]')).to_contain_text("completed")  # listed by the page itself
        snapshot(page, screenshots, "jobs")
    finally:
        receiver.close()


def test_usage_charts_show_the_apis_counts(page, stack, screenshots):
    metered = client(stack, "metered")
    tokens = sum(metered.embeddings.create(model=FP32, input=["usage " * n]).usage.total_tokens for n in (1, 5, 9))
    sign_in(page, stack, "admin")
    open_page(page, "Usage", "usage")
    week_ago = (datetime.now(UTC) - timedelta(days=6)).date().isoformat()
    page.get_by_label("Since (UTC day)").fill(week_ago)
    page.get_by_label("Group by").select_option("tenant")
    page.get_by_role("button", name="Show").click()
    row = page.get_by_role("table", name="Usage per tenant").get_by_role("row").filter(has_text="metered")
    expect(row.get_by_role("cell")).to_have_text(["metered", "3", f"{tokens:,}", "0", "0", "0"])  # unpriced: 0
    chart = page.get_by_role("img", name=re.compile(r"^Tokens per day by tenant"))
    expect(chart).to_be_visible()
    assert chart.locator("rect").count() >= 1
    titles = chart.locator("rect title").all_text_contents()
    assert any(title.endswith(f"metered: {tokens:,} tokens") for title in titles), titles
    snapshot(page, screenshots, "usage")


def shown_cost(value: float) -> str:
    """A cost as the usage page writes it: up to 6 significant digits, en-US grouping, no trailing zeros."""
    text = f"{float(f'{value:.6g}'):,}"
    return text.removesuffix(".0")


def test_usage_shows_cost_and_groups_by_end_user(page, stack):
    """Per end user (the calls' `user`, recorded for a key with per-user limits), with the cost of each at the
    model's price, as the admin usage API reports them."""
    people = client(stack, "people")
    tokens: dict[str, int] = {}
    requests: dict[str, int] = {}
    for user in ("alice", "bob", "alice", None):
        extra = {"user": user} if user else {}
        used = people.embeddings.create(model=TINY, input=[f"the cost of {user}"], **extra).usage.total_tokens
        name = user or "(no user)"
        tokens[name], requests[name] = tokens.get(name, 0) + used, requests.get(name, 0) + 1
    report = rest(stack, "GET", "/v1/admin/usage?tenant=people&group_by_user=true", stack.keys["admin"]).json()
    costs = {(row["user"] or "(no user)"): row["cost"] for row in report["data"]}
    assert costs["alice"] == pytest.approx(tokens["alice"] * TINY_PRICE / 1e6)  # the API the page reads
    sign_in(page, stack, "admin")
    open_page(page, "Usage", "usage")
    page.get_by_label("Tenant").fill("people")
    page.get_by_label("Group by").select_option("user")
    page.get_by_role("button", name="Show").click()
    table = page.get_by_role("table", name="Usage per end user")
    expect(table.get_by_role("columnheader")).to_have_text(
        ["End user", "Requests", "Tokens", "Job requests", "Job tokens", "Cost (USD)"]
    )
    for name in ("alice", "bob", "(no user)"):
        row = table.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
        cells = [name, str(requests[name]), f"{tokens[name]:,}", "0", "0", shown_cost(costs[name])]
        expect(row.get_by_role("cell")).to_have_text(cells)
    expect(page.locator(".totals")).to_contain_text(f"Cost (USD){shown_cost(report['total_cost'])}")
    chart = page.get_by_role("img", name=re.compile(r"^Tokens per day by end user"))
    titles = chart.locator("rect title").all_text_contents()
    assert any(title.endswith(f"alice: {tokens['alice']:,} tokens") for title in titles), titles
    page.get_by_label("Group by").select_option("model")  # the same rows, summed per model
    row = page.get_by_role("table", name="Usage per model").get_by_role("row").filter(has_text=TINY)
    expect(row.get_by_role("cell")).to_have_text(
        [TINY, "4", f"{sum(tokens.values()):,}", "0", "0", shown_cost(report["total_cost"])]
    )


def test_a_user_key_is_refused_the_admin_pages(page, stack):
    sign_in(page, stack, "user")
    nav = page.get_by_role("navigation", name="Console pages")
    expect(nav.get_by_role("link")).to_have_text(["Models", "Playground", "Jobs and webhooks"])
    admin_id = stack.keys["admin"].split("-")[1]
    for route, title in (("usage", "Usage"), ("keys", "Keys and tenants")):
        page.goto(f"{stack.url}/console#/{route}")
        expect(page.get_by_role("heading", level=1)).to_have_text(title)
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Your API key may not do this")
        expect(alert).to_contain_text("This operation needs an admin API key. (HTTP 403, insufficient_permissions)")
        expect(page.locator("main form")).to_have_count(0)
        assert admin_id not in page.content()


def test_a_server_running_open_takes_an_empty_key(page, gateway):
    """The session's server has no keys (loopback): signing in with nothing works, and there are no admin pages."""
    page.goto(f"{gateway.base_url}/console")
    page.get_by_role("button", name="Sign in").click()
    nav = page.get_by_role("navigation", name="Console pages")
    expect(nav.get_by_role("link")).to_have_text(["Models", "Playground", "Jobs and webhooks"])
    expect(page.get_by_text("Signed in with no key (server running open)")).to_be_visible()
    expect(page.locator(f'tr[data-model="{FP32}"]')).to_be_visible()


def test_every_control_is_labelled_and_reachable_by_keyboard(page, stack):
    sign_in(page, stack, "admin")
    unlabelled = """() => [...document.querySelectorAll("input, select, textarea, button")]
        .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || el.textContent.trim()))
        .map((el) => el.outerHTML.slice(0, 100))"""
    for title, route in (
        ("Playground", "playground"),
        ("Usage", "usage"),
        ("Keys and tenants", "keys"),
        ("Jobs and webhooks", "jobs"),
        ("Models", "models"),
    ):
        open_page(page, title, route)
        expect(page.get_by_role("heading", level=1)).to_be_focused()  # focus follows navigation
        assert page.evaluate(unlabelled) == [], title
    page.reload()  # keyboard navigation starts at the top of the document
    expect(page.get_by_role("navigation", name="Console pages")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()


# --- /docs ----------------------------------------------------------------------------------------------------------


def _try_list_models(page: Page) -> None:
    operation = page.locator("#operations-EmbeddingService-EmbeddingService_ListModels")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
    body = json.loads(operation.locator(".live-responses-table .highlight-code code").first.inner_text())
    assert {m["id"] for m in body["data"]} >= {FP32, TINY}


def test_docs_try_it_with_the_api_key_field(page, stack, screenshots):
    page.goto(f"{stack.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    snapshot(page, screenshots, "docs")
    page.get_by_role("button", name="Authorize").first.click()
    page.get_by_label("auth-bearer-value").fill(stack.keys["user"])
    page.get_by_role("button", name="Apply credentials").click()
    page.locator(".auth-container").get_by_role("button", name="Close").click()
    sent = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("authorization"))))
    _try_list_models(page)
    assert (f"{stack.url}/v1/models", f"Bearer {stack.keys['user']}") in sent  # this origin, with the key


def test_docs_reuse_the_consoles_key_in_the_same_tab(page, stack):
    sign_in(page, stack, "user")
    page.get_by_role("link", name="API reference").click()
    expect(page.locator(".opblock").first).to_be_visible()
    _try_list_models(page)


def test_docs_without_a_key_show_the_apis_refusal(page, stack):
    page.goto(f"{stack.url}/docs")
    operation = page.locator("#operations-EmbeddingService-EmbeddingService_ListModels")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("401")
    health = page.locator("#operations-RestService-RestService_CheckHealth")
    health.locator(".opblock-summary").click()
    health.get_by_role("button", name="Try it out").click()
    health.get_by_role("button", name="Execute").click()
    expect(health.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
