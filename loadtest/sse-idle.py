#!/usr/bin/env python3
"""Idle memory per Server-Sent Events stream (issue 17), standard library only.

Usage: loadtest/sse-idle.py URL CLIENTS [HOLD_SECONDS]
  e.g. loadtest/sse-idle.py http://127.0.0.1:18300 10000 5

Opens CLIENTS streams `GET /sse?channel=idle-N` (one channel each, as
`herald-load idle` does for WebSockets), checks each answers 200, holds them
HOLD seconds, and prints the node's `process_resident_memory_bytes` before
and after, and the KiB per stream. Start the node with
`--max-connections-per-ip 0 --connection-rate-per-ip 0` and raise `ulimit -n`.
"""
import asyncio
import resource
import sys
import urllib.parse
import urllib.request


def rss(url):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    raise SystemExit("no process_resident_memory_bytes")


async def open_stream(host, port, i, sem):
    async with sem:
        r, w = await asyncio.open_connection(host, port)
        w.write(f"GET /sse?channel=idle-{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await w.drain()
        status = await r.readline()
        if b" 200 " not in status:
            raise SystemExit(f"stream {i}: {status!r}")
        while (await r.readline()) not in (b"\r\n", b""):
            pass
        return r, w


async def main():
    url, clients = sys.argv[1], int(sys.argv[2])
    hold = float(sys.argv[3]) if len(sys.argv) > 3 else 5
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    u = urllib.parse.urlsplit(url)
    before = rss(url)
    sem = asyncio.Semaphore(500)
    streams = await asyncio.gather(*(open_stream(u.hostname, u.port, i, sem) for i in range(clients)))
    await asyncio.sleep(hold)
    after = rss(url)
    print(f"streams {clients}  rss before {before / 2**20:.1f} MiB  after {after / 2**20:.1f} MiB  "
          f"KiB per stream {(after - before) / 1024 / clients:.2f}")
    for _, w in streams:
        w.close()


asyncio.run(main())
