import pytest

from formats.names import MISSING, ModelName, NameParseError, is_valid_tag, parse_repository, repository_key


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
        ("llama3:8b", ("registry.ollama.ai", "library", "llama3", "8b")),
        ("alice/model", ("registry.ollama.ai", "alice", "model", "latest")),
        ("alice/model:v1.2", ("registry.ollama.ai", "alice", "model", "v1.2")),
        ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest")),
        ("localhost:5000/ns/m:q4_K_M", ("localhost:5000", "ns", "m", "q4_K_M")),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", ("hf.co", "bartowski", "Llama-3.2-1B-GGUF", "Q4_K_M")),
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ],
)
def test_parse_fills_defaults(text: str, parts: tuple[str, str, str, str]) -> None:
    assert ModelName.parse(text).parts() == parts


def test_scheme_is_recorded() -> None:
    name = ModelName.parse("http://myreg:5000/ns/m")
    assert (name.scheme, name.host, name.repository) == ("http", "myreg:5000", "ns/m")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ns/",
        "m:",
        "a/b/c/d",
        "ns.x/m",
        "ns/m:a:b",
        "-bad/m",
        "ns/-m",
        "ns/m:-t",
        "a" * 81,
        "ns/" + "m" * 81,
        "ns/m:" + "t" * 81,
        "ns/m o",
    ],
)
def test_invalid_names(text: str) -> None:
    with pytest.raises(NameParseError):
        ModelName.parse(text)


def test_missing_sentinel_for_promised_parts() -> None:
    assert ModelName.parse_lenient("ns/").model == MISSING
    assert ModelName.parse_lenient("m:").tag == MISSING


def test_display_forms() -> None:
    assert ModelName.parse("llama3").display() == "llama3:latest"
    assert ModelName.parse("alice/m").display() == "alice/m:latest"
    assert ModelName.parse("REGISTRY.OLLAMA.AI/LIBRARY/m:x").display() == "m:x"
    assert ModelName.parse("localhost:5000/library/m").display() == "localhost:5000/library/m:latest"
    assert str(ModelName.parse("m")) == "registry.ollama.ai/library/m:latest"


def test_case_insensitive_matching() -> None:
    assert ModelName.parse("Alice/Model:Latest").matches(ModelName.parse("alice/model"))
    assert not ModelName.parse("alice/model:v2").matches(ModelName.parse("alice/model"))


def test_repository_paths() -> None:
    assert parse_repository("alice/llama3.2") == ("alice", "llama3.2")
    assert repository_key("Alice/Model") == "alice/model"
    for bad in ["alice", "a/b/c", "a./m", "a/m:t", "/m", "a/", "a/m/"]:
        with pytest.raises(NameParseError):
            parse_repository(bad)


def test_tags() -> None:
    assert is_valid_tag("latest") and is_valid_tag("v1.0_rc-2") and is_valid_tag("t" * 128)
    assert not is_valid_tag("t" * 129) and not is_valid_tag(".x") and not is_valid_tag("a:b") and not is_valid_tag("")
