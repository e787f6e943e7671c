"""``hangar create`` as Ollama creates (#18, "Create and Modelfile"): stacked adapters, show's
Modelfile for any value, empty TEMPLATE/SYSTEM, inherited config fields, pruning the replaced
version, ``from`` naming the immediate parent, UTF-16 Modelfiles, and the bytes of the JSON it
writes (Go's encoder: the digests Ollama gives the same inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.config import load
from client.create import CreateRequest, create
from client.store import Store
from formats import mediatypes as mt
from formats.names import ModelName
from tests.client.test_create import MODELFILE, hangar, layers_of
from tests.tinymodels import CHAT_TEMPLATE, write_tiny_llama, write_tiny_lora


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("src") / "tiny.gguf", dim=256, chat_template=CHAT_TEMPLATE)


@pytest.fixture
def workdir(tmp_path: Path, tiny: Path) -> Path:
    (tmp_path / "tiny.gguf").symlink_to(tiny)
    (tmp_path / "Modelfile").write_text(MODELFILE)
    return tmp_path


def store_of(home: Path) -> Store:
    return Store(load({"HANGAR_HOME": str(home)}).models)


def create_in(home: Path, request: CreateRequest) -> None:
    """``create`` in this process, for what a Modelfile cannot say (``info``, values no
    Modelfile can hold)."""
    settings = load({"HANGAR_HOME": str(home)})
    create(Store(settings.models), settings, request)


def test_adapters_stack_on_the_parents(workdir: Path) -> None:
    """#18 item 12: FROM a model with an adapter plus ADAPTER keeps the parent's adapter and
    appends the new one (§8.6 step 2)."""
    write_tiny_lora(workdir / "lora1.gguf", dim=256, seed=1)
    write_tiny_lora(workdir / "lora2.gguf", dim=256, seed=2)
    home = workdir / "home"
    (workdir / "One").write_text("FROM ./tiny.gguf\nADAPTER ./lora1.gguf\n")
    hangar(home, "create", "ad1", "-f", str(workdir / "One"))
    (workdir / "Two").write_text("FROM ad1\nADAPTER ./lora2.gguf\n")
    hangar(home, "create", "ad2", "-f", str(workdir / "Two"))
    first, _, _ = layers_of(home, "ad1")
    second, _, store = layers_of(home, "ad2")
    assert [d.media_type for d in second] == [mt.OLLAMA_MODEL, mt.OLLAMA_ADAPTER, mt.OLLAMA_ADAPTER]
    assert [d.digest for d in second[:2]] == [d.digest for d in first]
    assert store.blob_path(second[2].digest).read_bytes() == (workdir / "lora2.gguf").read_bytes()
    assert [d.extra.get("from") for d in second] == ["ad1:latest", "ad1:latest", None]
    modelfile = hangar(home, "show", "ad2", "--modelfile").stdout
    assert modelfile.count("\nADAPTER ") == 2


def test_triple_quotes_in_a_system_prompt_and_template_do_not_break_show(workdir: Path) -> None:
    """#18 item 13: show answers for any value, and its Modelfile creates the same layers."""
    home = workdir / "home"
    (workdir / "Quotes").write_text(
        'FROM ./tiny.gguf\nSYSTEM """Wrap code in """triple""" quotes.\nThen stop."""\n'
        'TEMPLATE """{{ .System }}\n"""{{ .Prompt }}""" said the user"""\n'
    )
    hangar(home, "create", "quotes", "-f", str(workdir / "Quotes"))
    layers, _, store = layers_of(home, "quotes")
    system = next(d for d in layers if d.media_type == mt.OLLAMA_SYSTEM)
    assert store.blob_path(system.digest).read_text() == 'Wrap code in """triple""" quotes.\nThen stop.'
    shown = hangar(home, "show", "quotes", "--modelfile")
    assert "does not read back" not in shown.stdout
    (workdir / "Again").write_text(shown.stdout)
    hangar(home, "create", "again", "-f", str(workdir / "Again"))
    assert [d.digest for d in layers_of(home, "again")[0]] == [d.digest for d in layers]
    assert hangar(home, "show", "quotes", "--system").stdout.rstrip("\n") == store.blob_path(system.digest).read_text()


def test_show_answers_for_a_value_no_modelfile_can_hold(workdir: Path) -> None:
    """A system prompt with a line ending in three quotes (possible through /api/create): show
    still answers, and its Modelfile says the value will not read back unchanged."""
    home = workdir / "home"
    hangar(home, "create", "base", cwd=workdir)
    system = 'Answer like a docstring:\n    """Say hi."""\n    return'
    create_in(home, CreateRequest(name="odd", base="base", system=system))
    shown = hangar(home, "show", "odd", "--modelfile")
    assert f'SYSTEM """{system}"""' in shown.stdout
    assert '# SYSTEM below holds a line ending in """ and does not read back unchanged' in shown.stdout
    assert "You are tiny." not in hangar(home, "show", "odd").stdout


def test_empty_template_and_system_keep_the_parents(workdir: Path) -> None:
    """#18 item 14: TEMPLATE "" and SYSTEM "" change nothing (Ollama replaces only with
    non-empty values); the child's template and system layers are the parent's."""
    home = workdir / "home"
    hangar(home, "create", "m1", cwd=workdir)
    (workdir / "Empty").write_text('FROM m1\nTEMPLATE ""\nSYSTEM ""\n')
    hangar(home, "create", "m2", "-f", str(workdir / "Empty"))
    parent, _, _ = layers_of(home, "m1")
    child, _, _ = layers_of(home, "m2")
    for kind in (mt.OLLAMA_TEMPLATE, mt.OLLAMA_SYSTEM):
        assert [d.digest for d in child if d.media_type == kind] == [d.digest for d in parent if d.media_type == kind]


def test_config_fields_are_inherited_and_info_overrides(workdir: Path) -> None:
    """#18 item 15 (§8.6 step 5): the parent's capabilities, model_format, renderer, parser and
    requires are inherited; ``info`` sets capabilities (added to the parent's) and the
    descriptive fields."""
    home = workdir / "home"
    (workdir / "Parent").write_text("FROM ./tiny.gguf\nRENDERER qwen3\nPARSER qwen3\nREQUIRES 0.9.1\n")
    hangar(home, "create", "base", "-f", str(workdir / "Parent"))
    create_in(
        home,
        CreateRequest(
            name="thinker", base="base", info={"capabilities": ["tools", "thinking"], "context_length": 4096}
        ),
    )
    config = layers_of(home, "thinker")[1]
    assert config["capabilities"] == ["tools", "thinking"] and config["context_length"] == 4096
    (workdir / "Child").write_text("FROM thinker\nSYSTEM Child.\n")
    hangar(home, "create", "child", "-f", str(workdir / "Child"))
    child = layers_of(home, "child")[1]
    assert child["capabilities"] == ["tools", "thinking"]
    assert (child["renderer"], child["parser"], child["requires"], child["model_format"]) == (
        "qwen3", "qwen3", "0.9.1", "gguf",
    )  # fmt: skip
    assert "context_length" not in child  # not inherited, as in Ollama
    (workdir / "Own").write_text("FROM thinker\nPARSER harmony\n")
    hangar(home, "create", "own", "-f", str(workdir / "Own"))
    assert layers_of(home, "own")[1]["parser"] == "harmony"
    create_in(
        home,
        CreateRequest(
            name="described",
            base="base",
            info={"model_family": "qwen3", "parameter_size": "7B", "quantization_level": "Q4_K_M", "base_name": "Q"},
        ),
    )
    described = layers_of(home, "described")[1]
    assert (described["model_family"], described["model_families"]) == ("qwen3", ["qwen3", "llama"])
    assert (described["model_type"], described["file_type"], described["base_name"]) == ("7B", "Q4_K_M", "Q")
    assert "RENDERER qwen3\nPARSER qwen3\nREQUIRES 0.9.1\n" in hangar(home, "show", "child", "--modelfile").stdout


def test_recreating_a_model_deletes_what_only_its_old_version_used(workdir: Path) -> None:
    """#18 item 16 (§8.6 step 6): the replaced version's blobs no model uses are deleted; those
    another model still uses are kept."""
    home = workdir / "home"
    (workdir / "V1").write_text("FROM ./tiny.gguf\nSYSTEM Version one.\nLICENSE shared\n")
    hangar(home, "create", "m", "-f", str(workdir / "V1"))
    hangar(home, "create", "keeper", "-f", str(workdir / "V1"))
    hangar(home, "create", "other", "-f", str(workdir / "V1"))
    old, _, store = layers_of(home, "m")
    old_config = store.get(ModelName.parse("m")).manifest.config
    assert old_config is not None
    hangar(home, "rm", "keeper")
    (workdir / "V2").write_text("FROM ./tiny.gguf\nSYSTEM Version two.\n")
    (workdir / "Other").write_text("FROM ./tiny.gguf\nSYSTEM Another.\n")
    hangar(home, "create", "other", "-f", str(workdir / "Other"))  # now only m holds "Version one."
    hangar(home, "create", "m", "-f", str(workdir / "V2"))
    by_type = {d.media_type: d for d in old}
    assert not store.blob_path(by_type[mt.OLLAMA_SYSTEM].digest).exists()
    assert not store.blob_path(by_type[mt.OLLAMA_LICENSE].digest).exists()
    assert store.blob_path(by_type[mt.OLLAMA_MODEL].digest).exists()  # the new version uses it
    on_disk = {p.name.removeprefix("sha256-") for p in store.blobs_dir.iterdir()}
    assert on_disk == {d.hex for d in store.referenced_digests()}


def test_inherited_layers_name_the_immediate_parent(workdir: Path) -> None:
    """#18 item 16: every layer taken from a model names that model in ``from`` (its own
    ``from`` is replaced), as Ollama's NewLayerFromLayer does."""
    home = workdir / "home"
    hangar(home, "create", "grandparent", cwd=workdir)
    (workdir / "Parent").write_text("FROM grandparent\nSYSTEM Parent.\n")
    hangar(home, "create", "parent", "-f", str(workdir / "Parent"))
    (workdir / "Child").write_text("FROM parent\n")
    hangar(home, "create", "child", "-f", str(workdir / "Child"))
    # The params layer is written anew (the merged parameters), as Ollama does: it names no parent.
    parent = [d for d in layers_of(home, "parent")[0] if d.media_type != mt.OLLAMA_PARAMS]
    child = [d for d in layers_of(home, "child")[0] if d.media_type != mt.OLLAMA_PARAMS]
    assert {d.extra.get("from") for d in parent if d.media_type != mt.OLLAMA_SYSTEM} == {"grandparent:latest"}
    assert {d.extra.get("from") for d in child} == {"parent:latest"}


def test_a_utf16_modelfile_is_read(workdir: Path) -> None:
    """#18 item 16: a Modelfile saved as UTF-16 with its byte-order mark (Windows editors)."""
    home = workdir / "home"
    (workdir / "Wide").write_bytes("FROM ./tiny.gguf\r\nSYSTEM Grüße.\r\n".encode("utf-16"))
    hangar(home, "create", "wide", "-f", str(workdir / "Wide"))
    layers, _, store = layers_of(home, "wide")
    assert store.blob_path(layers[1].digest).read_text() == "Grüße."


def test_created_json_is_written_as_ollamas_go_encoder_writes_it(workdir: Path) -> None:
    """Manifest, config, params and messages blobs: compact, Go's escapes and number forms, one
    trailing newline, map keys sorted, struct keys in Ollama's order; so a model created FROM the
    same parent with the same instructions has Ollama's digests."""
    home = workdir / "home"
    hangar(home, "create", "parent", cwd=workdir)
    (workdir / "Child").write_text(
        "FROM parent\nPARAMETER temperature 1\nPARAMETER top_p 0.000001\nPARAMETER min_p 1e-7\n"
        'MESSAGE user "<b>&</b>"\n'
    )
    hangar(home, "create", "child", "-f", str(workdir / "Child"))
    store = store_of(home)
    model = store.get(ModelName.parse("child"))
    raw = model.path.read_bytes()
    assert raw.endswith(b"}\n") and b"\n" not in raw[:-1] and b": " not in raw
    doc = json.loads(raw)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert list(doc["layers"][0]) == ["mediaType", "digest", "size", "from"]
    assert list(doc["config"]) == ["mediaType", "digest", "size"]
    layers = {d.media_type: d for d in model.manifest.layers}
    params = store.blob_path(layers[mt.OLLAMA_PARAMS].digest).read_bytes()
    assert params == (
        b'{"min_p":1e-7,"num_ctx":256,"stop":["\\u003c|end|\\u003e","User:"],"temperature":1,"top_p":0.000001}\n'
    )
    messages = store.blob_path(layers[mt.OLLAMA_MESSAGES].digest).read_bytes()
    assert messages == b'[{"role":"user","content":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e"}]\n'
    assert model.manifest.config is not None
    config = store.blob_path(model.manifest.config.digest).read_bytes()
    assert config.startswith(b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],')
    assert config.endswith(b'"architecture":"amd64","os":"linux"}\n')


def test_digests_are_those_ollamas_own_tests_expect(tmp_path: Path) -> None:
    """The blobs Ollama's server/routes_create_test.go expects by digest, for a GGUF whose only
    key is general.architecture = "test": the config, the template, the parameters (TestCreate-
    MergeParameters: created, then merged over in a child FROM it), the messages
    (TestCreateReplacesMessages)."""
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "test.gguf"), "test")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    home = tmp_path / "home"
    store = store_of(home).ensure()
    digest, _ = store.add_blob_file(tmp_path / "test.gguf")
    create_in(
        home,
        CreateRequest(
            name="test",
            files={"test.gguf": digest},
            template="{{ .Prompt }}",
            parameters={"temperature": 1, "top_k": 10, "stop": ["USER:", "ASSISTANT:"]},
        ),
    )
    create_in(home, CreateRequest(name="test2", base="test", parameters={"temperature": 0.6, "top_p": 0.7}))
    first = store.get(ModelName.parse("test")).manifest
    second = store.get(ModelName.parse("test2")).manifest
    assert first.config is not None and second.config is not None
    config = "99759ad5b91e723db0393d698ffbb448b1b7df5ff6377a108c49254583b1bc8c"
    assert first.config.digest.hex == second.config.digest.hex == config
    by_type = {d.media_type: d.digest.hex for d in first.layers}
    assert by_type[mt.OLLAMA_TEMPLATE] == "b507b9c2f6ca642bffcd06665ea7c91f235fd32daeefdf875a0f938db05fb315"
    assert by_type[mt.OLLAMA_PARAMS] == "1d0ad71299d48c2fb7ae2b98e683643e771f8a5b72be34942af90d97a91c1e37"
    merged = {d.media_type: d.digest.hex for d in second.layers}[mt.OLLAMA_PARAMS]
    assert merged == "e29a7b3c47287a2489c895d21fe413c20f859a85d20e749492f52a838e36e1ba"
    messages = [
        {"role": "assistant", "content": "What is my purpose?"},
        {"role": "user", "content": "You run tests."},
        {"role": "assistant", "content": "Oh, my god."},
    ]
    create_in(home, CreateRequest(name="test3", base="test", messages=messages))
    layers = {d.media_type: d.digest.hex for d in store.get(ModelName.parse("test3")).manifest.layers}
    assert layers[mt.OLLAMA_MESSAGES] == "298baeaf6928a60cf666d88d64a1ba606feb43a2865687c39e40652e407bffc4"
