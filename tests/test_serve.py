"""The playground's server (SPEC 12) on 127.0.0.1: its answers against the CLI's, and its behaviour
under load and abuse: oversized bodies, huge dims, file paths, slow requests."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest
from hypothesis import settings
from test_reliability import run_cli

import indexgrad as ig
from indexgrad.api import FILENAME
from indexgrad.cli import main
from indexgrad.derive import derive_for, derive_jvp, forward_statements
from indexgrad.graph_svg import graph_svg
from indexgrad.latex import program_latex
from indexgrad.serve import STATIC, running
from indexgrad.tools import computation_graph

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.idx"))
TIMEOUT = 3.0  # the test server's time limit per request
# a trace of eight 1000 x 1000 matrices: its finite-difference check takes ~8 s on this machine
SLOW = {
    "source": "loss = a[i,j] b[j,k] c[k,l] d[l,m] e[m,n] f[n,o] g[o,p] h[p,i]",
    "dims": ",".join(f"{n}=1000" for n in "ijklmnop"),
}


@pytest.fixture(scope="module")
def server() -> Any:
    with running(workers=2, timeout=TIMEOUT) as url:
        yield urlsplit(url)


class Client:
    """One keep-alive connection to the test server."""

    def __init__(self, where: Any) -> None:
        self.conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}

    def post(self, kind: str, body: Any) -> tuple[int, dict[str, Any]]:
        status, data, _ = self.request(
            "POST", f"/api/{kind}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(data)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def client(server: Any) -> Any:
    c = Client(server)
    yield c
    c.close()


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(args))
    return code, out.getvalue()


# ---- the answers are the CLI's -----------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_derive_gives_what_the_cli_prints(client: Client, path: Path) -> None:
    src = path.read_text()
    p = ig.parse(src)
    for mode, command in (("grad", "grad"), ("jvp", "jvp")):
        status, reply = client.post("derive", {"source": src, "mode": mode})
        assert status == 200 and not [d for d in reply["diagnostics"] if d["severity"] == "error"]
        assert reply["idx"] == cli(command, str(path))[1]
        assert reply["latex"] + "\n" == cli(command, str(path), "--format", "latex")[1]
    d = derive_for(p, [], None)
    assert client.post("derive", {"source": src})[1]["latex"] == program_latex(
        forward_statements(p, d), d.statements
    )
    assert client.post("derive", {"source": src, "mode": "jvp"})[1]["latex"] == program_latex(
        [], derive_jvp(p).statements
    )


def test_derive_takes_loss_and_wrt_as_the_cli_does(client: Client) -> None:
    path = ROOT / "examples" / "mlp.idx"
    want = cli("grad", str(path), "--loss", "z", "--wrt", "W2,B2")[1]
    for wrt in ("W2,B2", ["W2", "B2"]):
        status, reply = client.post("derive", {"source": path.read_text(), "loss": "z", "wrt": wrt})
        assert status == 200 and reply["idx"] == want


@pytest.mark.parametrize(
    "name, dims", [("affine", "b=2"), ("mlp", "b=2,d=5"), ("correlation", "j=4"), ("softmax_xent", "")]
)
def test_check_and_cost_agree_with_the_cli(client: Client, name: str, dims: str) -> None:
    path = ROOT / "examples" / f"{name}.idx"
    src = path.read_text()
    status, reply = client.post("check", {"source": src, "dims": dims})
    code, text = cli("check", str(path), "--dims", dims)
    assert status == 200 and reply["ok"] is (code == 0) and reply["checked"] >= 1
    for name_, err in reply["errors"].items():  # same seed, same random inputs: the same numbers
        assert f"{name_}: relative error {err:.2e}" in text
    as_object = dict((k, int(v)) for k, v in (kv.split("=") for kv in dims.split(",") if kv))
    status, reply = client.post("cost", {"source": src, "dims": as_object})
    assert status == 200
    named = lambda text: text.replace(str(path), "playground.idx")  # noqa: E731  the editor's name
    assert reply["report"] == json.loads(named(cli("cost", str(path), "--dims", dims, "--format", "json")[1]))
    assert reply["text"] == named(cli("cost", str(path), "--dims", dims)[1])


def test_errors_come_at_their_line_and_column(client: Client) -> None:
    for src in ("y[b,i] = x[b,j] W[j,i\n", "param W[j,i]\ny[b,i] = x[b,j] W[j,i]\nz = relu(y[b,i]\n",
                "y[i] = x[i]\ny[i] = x[i]\n", "y = foo(x[i])\n"):
        with pytest.raises(ig.IndexgradError) as e:
            ig.parse(src)
        for kind in ("derive", "check", "cost", "graph"):
            status, reply = client.post(kind, {"source": src})
            (d,) = reply["diagnostics"]
            assert status == 200 and d["severity"] == "error"
            assert (d["line"], d["column"], d["message"]) == (e.value.line, e.value.column, e.value.message)


def test_warnings_are_diagnostics_too(client: Client) -> None:
    src = "y[b] = x[b,k] + 1\n"  # SPEC 1.4: the whole-right-side sum adds 1 K times
    p = ig.parse(src)
    status, reply = client.post("derive", {"source": src})
    assert status == 200 and [d["message"] for d in reply["diagnostics"]] == [w.message for w in p.warnings]
    assert all(d["severity"] == "warning" and d["line"] == 1 for d in reply["diagnostics"])


def test_graph_is_the_computation_graph_as_svg(client: Client) -> None:
    src = (ROOT / "examples" / "mlp.idx").read_text()
    for grad in (False, True):
        status, reply = client.post("graph", {"source": src, "grad": grad})
        assert status == 200 and reply["svg"] == graph_svg(computation_graph(ig.parse(src, FILENAME), grad))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_graph_svg_draws_every_tensor_and_operand_left_to_right(path: Path) -> None:
    g = computation_graph(ig.load(path), grad=True)
    svg = ElementTree.fromstring(graph_svg(g))  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    nodes = svg.findall(f"{ns}g[@class]")
    assert sorted(n.find(f"{ns}text").text for n in nodes) == sorted(n.text for n in g.nodes.values())
    x = {n.find(f"{ns}text").text: float(n.find(f"{ns}rect").get("x")) for n in nodes}
    edges = svg.findall(f"{ns}path[@class='edge']")
    assert len(edges) == len(g.edges)
    for e in g.edges:  # every arrow points right: sources are drawn in an earlier column
        assert x[g.nodes[e.source].text] < x[g.nodes[e.target].text]


def test_examples_are_listed_from_the_package(client: Client) -> None:
    status, data, _ = client.request("GET", "/api/examples")
    listed = {e["name"]: e["source"] for e in json.loads(data)["examples"]}
    assert status == 200 and listed == {p.stem: p.read_text() for p in EXAMPLES}


# ---- requests that are not requests ------------------------------------------------------------


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"source": 3}).encode(), "'source'"),
        (json.dumps({"source": "y = x[i]", "file": "/etc/passwd"}).encode(), "unknown field 'file'"),
        (json.dumps({"source": "y = x[i]", "mode": "hessian"}).encode(), "'mode'"),
        (json.dumps({"source": "y = x[i]", "wrt": [1]}).encode(), "'wrt'"),
        (json.dumps({"source": "y = x[i]", "grad": "no"}).encode(), "'grad'"),
        (json.dumps({"source": "y = x[i]", "seed": -1}).encode(), "'seed'"),
    ],
)
def test_malformed_requests_are_400_with_a_reason(client: Client, body: bytes, needle: str) -> None:
    kind = "graph" if b'"grad"' in body else "check" if b'"seed"' in body else "derive"
    status, data, _ = client.request("POST", f"/api/{kind}", body, {"Content-Type": "application/json"})
    assert status == 400 and needle in json.loads(data)["error"]


def test_dims_mistakes_are_diagnostics(client: Client) -> None:
    for dims, needle in (("b=0", "between 1 and 1000000"), ("q=3", "'q'"), ({"b": "4"}, None)):
        status, reply = client.post("check", {"source": "y[b,i] = x[b,i]", "dims": dims})
        if needle is None:
            assert status == 400
        else:
            assert status == 200 and needle in reply["diagnostics"][0]["message"]


def test_a_body_over_64_kib_is_413(server: Any) -> None:
    big = json.dumps({"source": "#" * (1 << 20)}).encode()  # 1 MiB
    with socket.create_connection((server.hostname, server.port)) as s:  # by its Content-Length
        s.sendall(
            b"POST /api/derive HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(big)}\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")  # refused before the body is sent
    with socket.create_connection((server.hostname, server.port)) as s:  # chunked: by counting
        s.sendall(b"POST /api/derive HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):  # the server may close before all of it is sent
            for _ in range(32):
                s.sendall(b"8000\r\n" + b"#" * 0x8000 + b"\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    c = Client(server)  # a 64 KiB body is still answered, and so is everyone after
    status, reply = c.post("derive", {"source": "y = x[i]\n" + "#" * (64 * 1024 - 40)})
    assert status == 200 and reply["idx"]
    c.close()


def test_huge_dims_meet_the_memory_guard_and_the_server_goes_on(client: Client) -> None:
    src = "loss = a[i,j] b[j,k] c[k,i]"
    huge = "i=1000000,j=1000000,k=1000000"
    status, reply = client.post("check", {"source": src, "dims": huge})
    (d,) = reply["diagnostics"]
    assert status == 200 and "over the memory limit" in d["message"] and d["line"] == 1
    status, reply = client.post("cost", {"source": src, "dims": huge})  # sized from shapes: no arrays
    assert status == 200 and not reply["diagnostics"]
    assert reply["report"]["totals"]["forward_flops"] == 2 * 10**18 + 2 * 10**12  # (c (a b)): 2ijk + 2ik
    status, reply = client.post("check", {"source": src, "dims": "i=2,j=2,k=2"})
    assert status == 200 and reply["ok"] is True


def test_nothing_outside_the_static_folder_is_read(server: Any, client: Client) -> None:
    """Paths with ../ (plain, encoded, doubled) get 404, and the server process opens no file
    outside the package's static folder meanwhile (an audit hook watches every open)."""
    opened: list[str] = []
    watching = threading.Event()

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if watching.is_set() and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # stays for the process; it records only while `watching` is set
    secret = "indexgrad.serve"  # text of a package file beside the static folder
    paths = [
        "/static/../serve.py", "/static/%2e%2e/serve.py", "/static/..%2fserve.py",
        "/static/%2e%2e%2fserve.py",
        "/static/katex/../../serve.py", "/static/....//serve.py", "/../../../../etc/passwd",
        "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/" + "../" * 12 + "etc/passwd",
        f"/static/{ROOT}/pyproject.toml", "/api/../serve.py", "/static/katex",
    ]
    assert client.request("GET", "/static/style.css")[0] == 200  # lazy imports and mime types load now
    watching.set()
    try:
        for path in paths:
            status, data, _ = client.request("GET", path)
            assert status in (400, 404, 405), path
            assert b"root:" not in data and secret.encode() not in data, path
        status, reply = client.post("derive", {"source": "/etc/passwd"})  # read as a program, not a path
        assert status == 200 and reply["diagnostics"][0]["line"] == 1
        status, data, _ = client.request("GET", "/static/katex/LICENSE")
        assert status == 200 and b"MIT" in data
    finally:
        watching.clear()
    assert opened == [str(STATIC / "katex" / "LICENSE")]


def test_a_slow_request_does_not_block_others(server: Any) -> None:
    """A request past its time limit is answered 504 and its worker killed; meanwhile, and after,
    the other worker answers small requests at once."""
    slow: dict[str, Any] = {}

    def run_slow() -> None:
        c = Client(server)
        t = time.perf_counter()
        slow["status"], slow["reply"] = c.post("check", SLOW)
        slow["seconds"] = time.perf_counter() - t
        c.close()

    thread = threading.Thread(target=run_slow)
    thread.start()
    time.sleep(0.3)
    c = Client(server)
    latencies = []
    while thread.is_alive():
        t = time.perf_counter()
        status, reply = c.post("derive", {"source": "y[b,i] = x[b,j] W[j,i]"})
        latencies.append(time.perf_counter() - t)
        assert status == 200 and reply["idx"]
        time.sleep(0.05)
    thread.join()
    assert slow["status"] == 504 and "longer than" in slow["reply"]["diagnostics"][0]["message"]
    assert TIMEOUT - 0.5 < slow["seconds"] < TIMEOUT + 3
    assert len(latencies) >= 5 and max(latencies) < 1.5, latencies
    for _ in range(6):  # both workers answer again (the killed one was replaced)
        assert c.post("check", {"source": "loss = x[i] x[i]"})[0] == 200
    c.close()


# make fuzz (the fuzz profile) sends 2,000 requests; make test 600, 30 on each keep-alive connection
REQUESTS = 2000 if settings().max_examples >= 1000 else 600


@pytest.mark.fuzz
def test_load_from_20_clients(server: Any) -> None:
    """REQUESTS requests, 20 clients at a time, each a keep-alive connection: no error; p99 printed."""
    report = load(server, requests=REQUESTS, clients=20)
    print(f"\nplayground load: {report}")
    assert report["errors"] == 0


def load(where: Any, requests: int, clients: int) -> dict[str, Any]:
    """Send `requests` small requests from `clients` threads; latency percentiles in ms."""
    srcs = [p.read_text() for p in EXAMPLES if p.stem in ("affine", "logistic", "tanh_net", "sqrt_norm")]
    kinds = [("derive", {}), ("graph", {}), ("cost", {}), ("check", {})]  # every index of size 3
    jobs = [(kinds[k % 4][0], {"source": srcs[k % len(srcs)], **kinds[k % 4][1]}) for k in range(requests)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(mine: list[tuple[str, dict[str, Any]]]) -> None:
        c = Client(where)
        for kind, body in mine:
            t = time.perf_counter()
            try:
                status, reply = c.post(kind, body)
                ok = status == 200 and not any(d["severity"] == "error" for d in reply["diagnostics"])
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, status = False, repr(e)
            with lock:
                latencies.append(time.perf_counter() - t)
                if not ok:
                    errors.append(f"{kind}: {status}")
        c.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(worker, [jobs[k::clients] for k in range(clients)]))
    wall = time.perf_counter() - start
    ms = sorted(1000 * t for t in latencies)
    return {
        "requests": len(ms),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(wall, 2),
        "per_second": round(len(ms) / wall),
        "p50_ms": round(ms[len(ms) // 2], 1),
        "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 1),
        "max_ms": round(ms[-1], 1),
    }


# ---- the command --------------------------------------------------------------------------------


def _listening(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for row in f.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                addr, p = local.split(":")
                if state == "0A" and int(p, 16) == port:
                    found.append(addr)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc/net/tcp")
def test_indexgrad_serve_listens_on_loopback_only() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "indexgrad"
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "indexgrad serve did not start"
            time.sleep(0.1)
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, and no other address
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        r = conn.getresponse()
        page = r.read().decode()
        assert r.status == 200 and "indexgrad" in page and "/static/katex/katex.min.js" in page
        assert "default-src 'self'" in r.getheader("Content-Security-Policy", "")
        conn.request("GET", "/", headers={"Host": "attacker.example"})  # DNS rebinding
        r = conn.getresponse()
        r.read()
        assert r.status == 400
        conn.close()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/" in out and "Traceback" not in out


def test_serve_flags_are_checked() -> None:
    assert cli("serve", "--port", "70000")[0] == 2
    assert cli("serve", "--workers", "0")[0] == 2


def test_an_address_it_cannot_listen_on_is_a_user_error() -> None:
    """A port in use, or a host that is no address here: Uvicorn logged the OSError and exited
    with status 1 or 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", "--port", str(port)])
    assert code == 2 and err.startswith(f"indexgrad serve: error: cannot listen on 127.0.0.1 port {port}: ")
    assert "choose another --port (0 picks a free one)" in err, err
    code, _, err = run_cli(["serve", "--host", "256.0.0.1", "--port", "0"])
    assert code == 2 and "cannot listen on 256.0.0.1 port 0" in err and "listening on" not in err, err


def test_page_refers_only_to_files_it_ships() -> None:
    page = (STATIC / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        assert (STATIC / ref.removeprefix("/static/")).is_file(), ref
    css = (STATIC / "katex" / "katex.min.css").read_text()
    fonts = set(re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))
    assert fonts and all((STATIC / "katex" / f).is_file() for f in fonts)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as Linux counts it")
def test_what_the_guard_lets_through_is_held_by_the_address_space_limit() -> None:
    """A 59.5 MiB input and each plan's peak pass a 64 MiB guard, but check holds several such
    arrays at once (the input, the kept values, the gradient, a direction, a moved copy and its
    values), past the worker's address space cap (4 x 64 MiB above its start): a MemoryError,
    answered as a diagnostic; the same worker then answers the next request."""
    from indexgrad.pool import Pool

    async def go() -> tuple[Any, Any]:
        pool = Pool(1, timeout=60, memory=64 << 20)
        await pool.start()
        try:
            src = "loss = sum[i,j](sigmoid(x[i,j]))"
            big = await pool.run("check", {"source": src, "dims": "i=1000,j=7800"})
            return big, await pool.run("check", {"source": "loss = x[i] x[i]"})
        finally:
            await pool.close()

    (status, big), (status2, small) = asyncio.run(go())
    assert status == 200 and "more memory than the playground allows" in big["diagnostics"][0]["message"]
    assert status2 == 200 and small["ok"] is True
