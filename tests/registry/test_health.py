"""``/healthz``, ``/readyz`` and ``/metrics`` (registry/metrics.py) on real registry processes."""

from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import digest_of, push_model, random_bytes
from tests.servers import RegistryProcess

BLOB_ROUTE = "/v2/{name:repo}/blobs/{digest}"


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_healthz_and_readyz(make_registry: Callable[..., RegistryProcess]) -> None:
    registry = make_registry("--rate-limit", "1")
    with httpx.Client(base_url=registry.url) as client:
        for _ in range(3):  # not rate limited, no authentication
            r = client.get("/healthz")
            assert r.status_code == 200 and r.text == "ok"
            r = client.get("/readyz")
            assert r.status_code == 200 and r.json() == {"status": "ready"}
        blobs: Path = registry.data_dir / "blobs"
        blobs.rename(registry.data_dir / "blobs-away")
        try:
            r = client.get("/readyz")
            assert r.status_code == 503
            assert list(r.json()["failed"]) == ["storage"]
            assert client.get("/healthz").status_code == 200
        finally:
            (registry.data_dir / "blobs-away").rename(blobs)
        assert client.get("/readyz").status_code == 200


def test_metrics_count_a_push_and_a_pull(make_registry: Callable[..., RegistryProcess]) -> None:
    # Two workers: prometheus-client's multiprocess mode adds both up whichever one answers.
    registry = make_registry("--workers", "2")
    repo = "metrics/model"
    with httpx.Client(base_url=registry.url) as client:
        before = scrape(client)
        # A push: a chunked upload session (POST, PATCH, PUT) and a model of monolithic uploads.
        data = random_bytes(100_000)
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        r = client.patch(r.headers["Location"], content=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 202, r.text
        r = client.put(r.headers["Location"], params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
        _, layers = push_model(client, repo)
        pushed = len(data) + sum(layer["size"] for layer in layers)
        # A pull of the chunked blob.
        r = client.get(f"/v2/{repo}/blobs/{digest_of(data)}")
        assert r.status_code in (200, 307)
        redirected = r.status_code == 307
        if redirected:
            r = client.get(r.headers["Location"])
            assert r.status_code == 200
        assert r.content == data
        after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("hangar_registry_upload_sessions_started_total") == 4
    assert delta("hangar_registry_upload_sessions_completed_total") == 4
    assert delta("hangar_registry_blob_bytes_received_total") == pushed
    assert delta("hangar_registry_blob_bytes_sent_total") == len(data)
    assert delta("hangar_registry_blob_redirects_total") == (1 if redirected else 0)
    assert delta("hangar_registry_requests_total", method="PUT", route="/v2/{name:repo}/manifests/{reference}",
                 status="201") == 1  # fmt: skip
    assert delta("hangar_registry_requests_total", method="GET", route=BLOB_ROUTE) == (2 if redirected else 1)
    assert delta("hangar_registry_request_duration_seconds_count", method="PATCH") == 1
    # Route labels are templates: no repository name, digest or upload id in any label.
    routes = {dict(labels).get("route", "") for (_, labels) in after}
    assert BLOB_ROUTE in routes and "/metrics" in routes
    assert not any("metrics/model" in route or "sha256:" in route for route in routes)
    assert total(after, "hangar_registry_db_pool_size") >= 1


def test_metrics_off(make_registry: Callable[..., RegistryProcess]) -> None:
    registry = make_registry("--metrics", "off")
    with httpx.Client(base_url=registry.url) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200
