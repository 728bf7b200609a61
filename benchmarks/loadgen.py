"""A small HTTP/1.1 load generator for the API benchmarks, run as its own process so its
CPU is measured apart from the server's (and so the Python client never competes with
the server for the GIL).

C keep-alive connections on one asyncio loop (uvloop when installed), each sending the
next pre-encoded request as soon as the previous answer is read: a closed loop, as C
clients waiting on each other would. Requests are pre-built bytes and answers are read
by their Content-Length, so one request costs the client a few tens of microseconds.

    python -m benchmarks.loadgen --port 8000 --key idk_... --bodies bodies.json \
        --path /v1/search/embedding --clients 16 --seconds 20

Prints one JSON object: requests, errors (with the first error's status and body),
requests/s, p50/p99 in ms, and the client's own CPU seconds (user + system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time

import numpy as np


def _request(host: str, port: int, path: str, key: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def run(host: str, port: int, requests: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[tuple[int, bytes]] = []
    stop = time.perf_counter() + seconds

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = n
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body = await _read_response(reader)
                elapsed = time.perf_counter() - t
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append((status, body[:300]))
                i += clients
        finally:
            writer.close()

    cpu0 = _cpu()
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    wall = time.perf_counter() - started
    cpu = _cpu() - cpu0
    lat = np.asarray(latencies) * 1000.0 if latencies else np.zeros(1)
    return {
        "clients": clients, "seconds": round(wall, 2), "requests": len(latencies), "errors": len(errors),
        "first_error": None if not errors else {"status": errors[0][0], "body": errors[0][1].decode(errors="replace")},
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "client_cpu_s": round(cpu, 2), "client_cpu_share": round(cpu / wall, 3),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--path", default="/v1/search/embedding")
    parser.add_argument("--bodies", required=True, help="a JSON file: a list of request bodies (JSON values)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with open(args.bodies) as fh:
        bodies = [json.dumps(b, separators=(",", ":")).encode() for b in json.load(fh)]
    requests = [_request(args.host, args.port, args.path, args.key, b) for b in bodies]
    coro = run(args.host, args.port, requests, args.clients, args.seconds)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
