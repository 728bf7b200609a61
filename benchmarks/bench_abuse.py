"""Memory of an API process under unauthenticated uploads (the abuse the issue measured).

    nice python -m benchmarks.bench_abuse                       # this tree
    nice python -m benchmarks.bench_abuse --code /tmp/old-tree  # another checkout, same venv

Starts uvicorn on `identity.api.app:app_from_env` (a throwaway data directory, so the
embedded PostgreSQL; the real weights when --models is given), waits until it answers
/readyz, then sends `--requests` concurrent POST /v1/search uploads of `--size-mb` MB each,
first without any key and then with a wrong one. The server's peak resident memory during
each wave (VmHWM, reset through /proc/PID/clear_refs before it) minus its resident memory
before is the figure: what a client without a key can make the server hold.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _upload(port: int, body: bytes, boundary: str, key: str | None, results: list, start: threading.Event) -> None:
    """Send the upload in 64 kB pieces, reading the answer as soon as the server gives one
    (a server that decides from the headers answers before the body is sent)."""
    start.wait()
    head = (f"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
            + (f"X-API-Key: {key}\r\n" if key else "") + "\r\n").encode()
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(head)
            while sent < len(body):
                if select.select([sock], [], [], 0)[0]:
                    break  # answered early
                sent += sock.send(body[sent:sent + 65536])
            status = sock.recv(64).split(b" ")[1].decode()
    except OSError as exc:
        status = type(exc).__name__
    results.append((status, sent == len(body)))


def wave(pid: int, port: int, *, requests: int, size: int, key: str | None) -> dict:
    boundary = "benchboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    body = head + os.urandom(size - len(head) - 40) + f"\r\n--{boundary}--\r\n".encode()
    before = _kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    results: list = []
    start = threading.Event()
    threads = [threading.Thread(target=_upload, args=(port, body, boundary, key, results, start))
               for _ in range(requests)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    time.sleep(0.5)
    peak = _kib(pid, "VmHWM")
    statuses: dict = {}
    for status, whole in results:
        label = f"{status} ({'after the whole body' if whole else 'before the whole body was sent'})"
        statuses[label] = statuses.get(label, 0) + 1
    return {"key": "wrong" if key else "none", "requests": requests, "size_mb": size / 1e6,
            "rss_before_mib": round(before / 1024, 1), "peak_mib": round(peak / 1024, 1),
            "peak_increase_mib": round((peak - before) / 1024, 1), "seconds": round(seconds, 2),
            "responses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="Source tree to serve (default: this one).")
    parser.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--size-mb", type=float, default=19.0)
    args = parser.parse_args()

    port = _port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
        env.update({"IDENTITY_DATA_DIR": data_dir, "IDENTITY_MODELS_DIR": str(args.models),
                    "IDENTITY_CACHE_DIR": str(ROOT / ".pytest_cache" / "d" / "identity-weights"),
                    "IDENTITY_DEVICE": "cpu", "PYTHONPATH": str(args.code), "OMP_NUM_THREADS": "1"})
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "identity.api.app:app_from_env",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=args.code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while True:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/readyz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the server did not get ready"
                time.sleep(1)
            time.sleep(2)
            size = int(args.size_mb * 1e6)
            report = {"code": str(args.code), "waves": [
                wave(server.pid, port, requests=args.requests, size=size, key=None),
                wave(server.pid, port, requests=args.requests, size=size,
                     key="idk_0123456789abcdef_" + "A" * 43),
            ]}
            print(json.dumps(report, indent=2))
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
