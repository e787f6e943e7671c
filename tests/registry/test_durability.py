"""Interrupted uploads, restarts, kill -9, concurrency, several workers, purging."""

import contextlib
import http.client
import os
import signal
import socket
import threading
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from tests.helpers import digest_of, error_codes, random_bytes
from tests.servers import wait_until


def start(client: httpx.Client, repo: str) -> str:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    return r.headers["Location"]


def patch(client: httpx.Client, url: str, data: bytes, offset: int) -> httpx.Response:
    return client.patch(url, content=data, headers={"Content-Range": f"{offset}-{offset + len(data) - 1}"})


def send_partial_patch(url: str, total: int, body: bytes, offset: int = 0) -> socket.socket:
    """Start a PATCH that declares ``total`` bytes but send only ``body``; the socket stays open."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = (
        f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {total}\r\nContent-Range: {offset}-{offset + total - 1}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def upload_file(data_dir: Path, url: str) -> Path:
    return data_dir / "uploads" / url.rsplit("/", 1)[1]


def blob_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


def test_upload_resumes_after_server_restart(make_registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    data = random_bytes(3_000_000)
    with httpx.Client(base_url=registry.url) as client:
        url = start(client, repo)
        assert patch(client, url, data[:1_000_000], 0).status_code == 202
        # The client goes away in the middle of the second chunk: it is dropped whole.
        sock = send_partial_patch(url, 1_000_000, data[1_000_000:1_600_000], 1_000_000)
        sock.close()
        wait_until(lambda: client.get(url).headers["Upload-Offset"] == "1000000", 10, "the partial chunk to be dropped")

    registry.restart()
    with httpx.Client(base_url=registry.url) as client:
        status = client.get(url)
        assert status.status_code == 204 and status.headers["Range"] == "0-999999"
        offset = int(status.headers["Upload-Offset"])
        assert patch(client, url, data[offset:], offset).status_code == 202
        r = client.put(url, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/{repo}/blobs/{digest_of(data)}").content == data


def test_kill_9_during_upload_leaves_no_visible_blob(make_registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    data = random_bytes(16 * 1024 * 1024)
    digest = digest_of(data)
    with httpx.Client(base_url=registry.url) as client:
        url = start(client, repo)
    sock = send_partial_patch(url, len(data), data[: 12 * 1024 * 1024])
    partial = upload_file(registry.data_dir, url)
    wait_until(lambda: partial.stat().st_size >= 4 * 1024 * 1024, 20, "bytes to reach the disk")
    registry.kill()
    sock.close()

    assert blob_files(registry.data_dir) == []
    registry.start()
    with httpx.Client(base_url=registry.url) as client:
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        r = client.put(url, params={"digest": digest})
        assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        assert blob_files(registry.data_dir) == []
        # The registry is healthy afterwards: the same blob uploads fine.
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
        assert r.status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_concurrent_uploads_of_the_same_blob(make_registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    data = random_bytes(5_000_000)
    results: list[int] = []

    def upload(i: int) -> None:
        with httpx.Client(base_url=registry.url, timeout=60) as client:
            url = start(client, f"{repo}{i % 2}")
            for offset in range(0, len(data), 1_000_000):
                r = patch(client, url, data[offset : offset + 1_000_000], offset)
                assert r.status_code == 202
                url = r.headers["Location"]
            results.append(client.put(url, params={"digest": digest_of(data)}).status_code)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * 6
    files = blob_files(registry.data_dir)
    assert len(files) == 1 and files[0].read_bytes() == data
    assert list((registry.data_dir / "uploads").iterdir()) == []
    with httpx.Client(base_url=registry.url) as client:
        for i in range(2):
            assert client.get(f"/v2/{repo}{i}/blobs/{digest_of(data)}").content == data


def worker_pids(main_pid: int) -> list[int]:
    """The uvicorn worker processes of a registry (its children started by multiprocessing)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if ppid == main_pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def serving_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end of our connection (from /proc/net/tcp and the fds)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
                if local == server_port and remote == client_port:
                    inode = fields[9]
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    return None


def test_several_workers_share_upload_sessions(make_registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    """One upload session, its chunks served by both workers in turn: each worker is paused
    (SIGSTOP) while the other takes its share, and /proc says which one held each connection."""
    registry = make_registry("--workers", "2")
    assert registry.proc is not None
    wait_until(lambda: len(worker_pids(registry.proc.pid)) == 2, 30, "two workers")
    workers = worker_pids(registry.proc.pid)
    data = random_bytes(2_000_000)
    url = urlsplit(start(httpx.Client(base_url=registry.url), repo))
    served: list[int | None] = []
    for offset in range(0, len(data), 100_000):
        paused = workers[(offset // 100_000) % 2]  # the other worker must take this chunk
        os.kill(paused, signal.SIGSTOP)
        try:
            conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
            chunk = data[offset : offset + 100_000]
            headers = {
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                "Content-Type": "application/octet-stream",
            }
            conn.request("PATCH", url.path + (f"?{url.query}" if url.query else ""), chunk, headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 202, response.status
            served.append(serving_pid(registry.port, conn.sock.getsockname()[1], workers))
            location = response.getheader("Location")
            assert location
            url = urlsplit(location if "://" in location else registry.url + location)
            conn.close()
        finally:
            os.kill(paused, signal.SIGCONT)
    assert served == [workers[(i + 1) % 2] for i in range(len(served))], (served, workers)
    with httpx.Client() as fresh:
        final = f"{registry.url}{url.path}"
        assert fresh.put(final, params={**dict(parse_qsl(url.query)), "digest": digest_of(data)}).status_code == 201
        assert fresh.get(f"{registry.url}/v2/{repo}/blobs/{digest_of(data)}").content == data


def test_abandoned_uploads_are_purged(make_registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry("--upload-max-age", "2s")
    with httpx.Client(base_url=registry.url) as client:
        url = start(client, repo)
        patch(client, url, b"x" * 1000, 0)
        assert upload_file(registry.data_dir, url).exists()
        wait_until(lambda: client.get(url).status_code == 404, 20, "the session to be purged")
        assert error_codes(client.get(url)) == ["BLOB_UPLOAD_UNKNOWN"]
        assert not upload_file(registry.data_dir, url).exists()
