"""Fixtures for the web site's tests: models with a README, a GGUF and a description, pushed by
real people to a real registry; and a headless Chromium (Debian's, driven by Selenium)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from formats import mediatypes as mt
from formats.manifest import Descriptor, Manifest
from formats.names import ModelName
from registry.web.cards import README
from tests.people import Person
from tests.tinymodels import CHAT_TEMPLATE, write_tiny_llama

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_tiny_llama(tmp_path_factory.mktemp("web-gguf") / "tiny.gguf", chat_template=CHAT_TEMPLATE)
    return path.read_bytes()


def publish(
    person: Person,
    repository: str,
    gguf: bytes,
    *,
    tag: str = "latest",
    readme: str | None = None,
    system: str | None = "You are a helpful assistant.",
) -> ModelName:
    """Push ``person``'s model ``repository:tag``: a GGUF model layer, a template, a system prompt,
    parameters, a licence and (when given) a README layer."""
    store = person.store
    name = ModelName.parse(f"{person.registry.host}/{repository}:{tag}")

    def blob(media_type: str, data: bytes) -> Descriptor:
        digest, size = store.add_blob_bytes(data)
        return Descriptor(media_type, digest, size)

    layers = [
        blob(mt.OLLAMA_MODEL, gguf),
        blob(mt.OLLAMA_TEMPLATE, b"{{ .System }} {{ .Prompt }}"),
        blob(mt.OLLAMA_PARAMS, json.dumps({"temperature": 0.5, "stop": ["</s>"]}).encode()),
        blob(mt.OLLAMA_LICENSE, b"Apache License 2.0"),
    ]
    if system is not None:
        layers.append(blob(mt.OLLAMA_SYSTEM, system.encode()))
    if readme is not None:
        layers.append(blob(README, readme.encode()))
    config = blob(mt.DOCKER_CONFIG, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    store.put_manifest(name, Manifest.build(config, layers).raw)
    person.push(name)
    return name


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Chromium from Debian (scripts/setup.sh installs it), 1280×900."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Chromium is not installed: run scripts/setup.sh (apt: chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshot_dir() -> Path | None:
    """Where the tests save screenshots of the main pages: ``HANGAR_WEB_SCREENSHOTS`` (e.g.
    ``docs/web``), unset by default so that the suite does not rewrite them on every run."""
    value = os.environ.get("HANGAR_WEB_SCREENSHOTS")
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path
