"""A minimal keep-alive HTTP receiver for the journeys benchmark: answers every request 200,
counts requests and distinct `webhook-id`s per path. asyncio, one process: enough for tens of
thousands of small POSTs per second, so the orchestrator, not the receiver, is measured.
GET /stats answers the counts as JSON."""

import asyncio
import json
import sys

count = {"requests": 0}
ids: dict[str, set] = {}


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {}
            for l in lines[1:]:
                if ":" in l:
                    k, v = l.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0"))
            if n:
                await reader.readexactly(n)
            if method == "GET" and path == "/stats":
                body = json.dumps({"requests": count["requests"], "ids": {p: len(s) for p, s in ids.items()}}).encode()
            else:
                body = b""
                if method == "POST":
                    count["requests"] += 1
                    wid = headers.get("webhook-id")
                    if wid:
                        ids.setdefault(path, set()).add(wid)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\nContent-Type: application/json\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int):
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
