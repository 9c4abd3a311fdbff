"""HTTP load on the coordinator while training runs (loopback only, bounded
in time): N concurrent scrapers on keep-alive connections, each fetching
/metrics and /api/v1/experts once per second; clients sending malformed
requests; slow clients trickling a request byte by byte; clients that close
mid-response. Prints one JSON line of counts.

Usage: http_load.py HOST:PORT SECONDS [SCRAPERS]   (SIGTERM ends it early)
"""
import asyncio
import json
import sys
import time

host, port = sys.argv[1].rsplit(":", 1)
port = int(port)
seconds = float(sys.argv[2])
scrapers = int(sys.argv[3]) if len(sys.argv) > 3 else 200
stats = {"ok": 0, "bad_answered": 0, "errors": 0, "slow": 0, "disconnects": 0}
deadline = time.monotonic() + seconds


async def read_response(r):
    head = await r.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    return status


async def scraper(i):
    await asyncio.sleep(i / scrapers)
    try:
        r, w = await asyncio.open_connection(host, port)
        paths = ["/metrics", "/api/v1/experts"]
        n = 0
        while time.monotonic() < deadline:
            w.write(f"GET {paths[n % 2]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await w.drain()
            if await read_response(r) == 200:
                stats["ok"] += 1
            n += 1
            await asyncio.sleep(1.0)
        w.close()
    except Exception:
        stats["errors"] += 1


BAD = [b"\x00\x01garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"NOPE /metrics HTTP/1.1\r\n\r\n",
       b"GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
       b"POST /api/v1/checkpoint HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
       b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"]


async def malformed(i):
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(BAD[i % len(BAD)])
            await w.drain()
            data = await asyncio.wait_for(r.read(4096), 5)
            if data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5"):
                stats["bad_answered"] += 1
            w.close()
        except Exception:
            stats["bad_answered"] += 1  # the server may also just close
        i += 1
        await asyncio.sleep(0.2)


async def slow(i):
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(host, port)
            for b in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n\r\n":
                if time.monotonic() > deadline:
                    break
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(0.5)
            w.close()
            stats["slow"] += 1
        except Exception:
            stats["slow"] += 1


async def disconnecter(i):
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            await w.drain()
            await r.read(10)
            w.transport.abort()
            stats["disconnects"] += 1
        except Exception:
            stats["errors"] += 1
        await asyncio.sleep(0.1)


def stop():
    global deadline
    deadline = time.monotonic()


async def main():
    import signal
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    tasks = [scraper(i) for i in range(scrapers)]
    tasks += [malformed(i) for i in range(5)] + [slow(i) for i in range(5)]
    tasks += [disconnecter(i) for i in range(5)]
    await asyncio.gather(*tasks)


asyncio.run(main())
print(json.dumps(stats))
