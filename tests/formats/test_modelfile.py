"""The Modelfile grammar: every instruction, each quoting form, comments, and each error."""

from __future__ import annotations

import pytest

from formats.modelfile import ModelfileError, decode, parse, quote, quote_exact

FULL = '''# a comment where an instruction could start
FROM llama3.2
from ./mmproj.gguf
ADAPTER ./lora.gguf
Template """{{ if .System }}<|system|>{{ .System }}{{ end }}
<|user|>{{ .Prompt }} # not a comment
<|assistant|>"""
SYSTEM "You are "terse"?"
system   You are   helpful.
PARAMETER temperature 0.7
parameter num_ctx 4096
PARAMETER stop <|end|>
PARAMETER stop "User:"
PARAMETER use_mmap false
PARAMETER mirostat 2
LICENSE MIT
LICENSE """Line one
Line two"""
MESSAGE user Is it blue?
MESSAGE assistant "Yes, quite."
REQUIRES v0.12.3
RENDERER qwen3
PARSER qwen3
DRAFT ./small.gguf
'''


def test_every_instruction() -> None:
    m = parse(FULL)
    assert m.base == "llama3.2" and m.projectors == ["./mmproj.gguf"]
    assert m.adapters == ["./lora.gguf"] and m.drafts == ["./small.gguf"]
    assert m.template == (
        "{{ if .System }}<|system|>{{ .System }}{{ end }}\n<|user|>{{ .Prompt }} # not a comment\n<|assistant|>"
    )
    assert m.system == "You are   helpful."  # the later SYSTEM wins; inner spaces kept
    assert m.parameters == {"temperature": 0.7, "num_ctx": 4096, "stop": ["<|end|>", "User:"], "use_mmap": False}
    assert m.warnings == ["(line 15): parameter 'mirostat' is no longer supported and was ignored"]
    assert m.licenses == ["MIT", "Line one\nLine two"]
    assert m.messages == [{"role": "user", "content": "Is it blue?"}, {"role": "assistant", "content": "Yes, quite."}]
    assert (m.requires, m.renderer, m.parser) == ("0.12.3", "qwen3", "qwen3")


@pytest.mark.parametrize(
    ("text", "system"),
    [
        ('FROM x\nSYSTEM "quoted"', "quoted"),
        ('FROM x\nSYSTEM "two\nlines"', "two\nlines"),
        ('FROM x\nSYSTEM """has "quotes" inside"""', 'has "quotes" inside'),
        ('FROM x\nSYSTEM """\nleading and trailing newlines\n"""', "\nleading and trailing newlines\n"),
        ("FROM x\nSYSTEM 'single quotes are literal'", "'single quotes are literal'"),
        ("FROM x\nSYSTEM # a value, not a comment", "# a value, not a comment"),
        ('FROM x\nSYSTEM """"""', ""),
        ("\ufeffFROM x\r\nSYSTEM crlf\r\n", "crlf"),
    ],
)
def test_quoting_forms(text: str, system: str) -> None:
    assert parse(text).system == system


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SYSTEM hi", "no FROM line"),
        ("", "no FROM line"),
        ("FROM x\nSYSTME hi", r'\(line 2\): command must be one of "from", .*"message", or "requires"'),
        ('FROM x\nSYSTEM """never closed', "unexpected EOF"),
        ('FROM x\nSYSTEM "never closed\nstill open', "unexpected EOF"),
        ("FROM x\nPARAMETER num_ctx big", r"\(line 2\): invalid int value \[big\] for parameter 'num_ctx'"),
        ("FROM x\nPARAMETER temperature hot", r"invalid float value \[hot\] for parameter 'temperature'"),
        ("FROM x\nPARAMETER use_mmap maybe", r"invalid bool value \[maybe\] for parameter 'use_mmap'"),
        ("FROM x\nPARAMETER colour red", r"\(line 2\): unknown parameter 'colour'"),
        ("FROM x\nPARAMETER num_ctx", r"\(line 2\): PARAMETER needs a parameter name and a value"),
        ("FROM x\nMESSAGE robot hello", r'\(line 2\): role must be one of "system", "user", or "assistant"'),
        ("FROM x\nMESSAGE User hello", "role must be one of"),
        ("FROM x\nREQUIRES soon", r"\(line 2\): requires must be a valid semver \(e.g. 0.14.0\)"),
        ("FROM x\nPARAMETER Temperature 0.7", r"unknown parameter 'Temperature'"),  # names are case-sensitive
        ("FROM x\nPARAMETER use_mmap tRuE", r"invalid bool value \[tRuE\]"),  # Go's ParseBool forms only
        ("FROM x\nPARAMETER use_mmap yes", r"invalid bool value \[yes\]"),
        ("FROM x\nPARAMETER num_ctx 1_000", r"invalid int value \[1_000\]"),
        ("FROM x\nPARAMETER num_ctx 4096.0", r"invalid int value \[4096.0\]"),
        ("FROM x\nPARAMETER num_ctx \u0663", r"invalid int value"),  # an Arabic-Indic digit
        ("FROM x\nPARAMETER num_ctx 9223372036854775808", r"invalid int value"),  # past int64
        ("FROM x\nPARAMETER temperature inf", r"invalid float value \[inf\]"),  # it wrote invalid JSON
        ("FROM x\nPARAMETER temperature NaN", r"invalid float value \[NaN\]"),
        ("FROM x\nPARAMETER temperature 1e39", r"invalid float value \[1e39\]"),  # past float32
        ("FROM x\nPARAMETER temperature 1_0", r"invalid float value"),
        ("FROM x\nPARAMETER Mirostat 2", r"unknown parameter 'Mirostat'"),
        ("FROM\n", r"\(line 1\): FROM needs a value"),
    ],
)
def test_errors_name_the_line_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ModelfileError, match=message):
        parse(text)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "two\nlines",
        " leading space",
        "trailing space ",
        'has "quotes"',
        '"starts with a quote',
        'ends with a quote"',
        'multi\nline "with" quotes\n',
        "",
        "\n",
        "{{ .Prompt }}",
        'bare """ is fine on one line',
    ],
)
def test_quote_round_trips(value: str) -> None:
    assert parse(f"FROM x\nSYSTEM {quote(value)}\n").system == value


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ('bare "quotes" on one line', 'bare "quotes" on one line'),
        ("two\nlines", '"two\nlines"'),
        (" leading", '" leading"'),
        ('multi\n"quoted"', '"""multi\n"quoted""""'),
    ],
)
def test_quote_writes_as_ollama_does_when_that_reads_back(value: str, written: str) -> None:
    """Ollama's writer (parser.quote): bare unless the value has a newline or an outer space,
    then "..." or, with a quote inside, \"\"\"...\"\"\"."""
    assert quote_exact(value) == (written, True)


@pytest.mark.parametrize(
    "value",
    [
        'two lines\nwith """ inside',  # broke show (#18, item 13)
        'starts """ with triple quotes\nand """ more',
        'ends with triple quotes\n"""',
        "trailing spaces on the first line   \nsecond",
        "tab at the end\t",
        "\ttab at the start",
        "windows\r\nline ends\r\n",
        '"""',
        '""',
        '"',
        "a\n\n\nb",
    ],
)
def test_values_ollama_cannot_write_round_trip(value: str) -> None:
    written, exact = quote_exact(value)
    assert exact
    assert parse(f"FROM x\nSYSTEM {written}\n").system == value
    assert parse(f"FROM x\nMESSAGE user {written}\n").messages[0]["content"] == value
    assert parse(f"FROM x\nPARAMETER stop {written}\n").parameters["stop"] == [value]


def test_a_value_the_grammar_cannot_hold_is_still_written() -> None:
    """A line ending in \"\"\" inside a value would close any quoting (the grammar has no escapes):
    quote still answers (show must), and says it is not exact."""
    for value in ('first line ends """\nsecond', 'a docstring:\n    """Say hi."""\n    return 1'):
        written, exact = quote_exact(value)
        assert not exact and written == f'"""{value}"""'
        assert quote(value) == written


@pytest.mark.parametrize(
    ("version", "stored"),
    [("0.14.0", "0.14.0"), ("v0.14.0", "0.14.0"), ("1", "1"), ("v1.2", "1.2"),
     ("1.2.3-rc.1+build.5", "1.2.3-rc.1+build.5"), ("1.0.0-0alpha", "1.0.0-0alpha")],
)  # fmt: skip
def test_requires_accepts_go_semver(version: str, stored: str) -> None:
    assert parse(f"FROM x\nREQUIRES {version}\n").requires == stored


@pytest.mark.parametrize(
    "version", ["01.2.3", "1.02.3", "1.2-rc1", "1.2.3-01", "1.2.3-", "1.2.3+", "1.2.3.4", "vv1.2.3", "1.2.3-a..b", "x"]
)
def test_requires_refuses_what_go_semver_refuses(version: str) -> None:
    with pytest.raises(ModelfileError, match=r"requires must be a valid semver \(e.g. 0.14.0\)"):
        parse(f"FROM x\nREQUIRES {version}\n")


def test_parameters_are_typed_as_ollama_types_them() -> None:
    m = parse(
        "FROM x\nPARAMETER temperature 0.123456789\nPARAMETER top_p .5\nPARAMETER num_ctx +4096\n"
        "PARAMETER use_mmap T\nPARAMETER min_p 0x1p-3\n"
    )
    # Floats are float32, as the Ollama CLI sends them (its shortest form).
    assert m.parameters == {"temperature": 0.12345679, "top_p": 0.5, "num_ctx": 4096, "use_mmap": True, "min_p": 0.125}


@pytest.mark.parametrize(
    "data",
    [
        "FROM x\nSYSTEM héllo\n".encode("utf-16"),  # with its BOM, little-endian here
        b"\xfe\xff" + "FROM x\nSYSTEM héllo\n".encode("utf-16-be"),
        b"\xef\xbb\xbf" + "FROM x\nSYSTEM héllo\n".encode(),
        "FROM x\nSYSTEM héllo\n".encode(),
    ],
)
def test_utf16_and_utf8_modelfiles_are_read(data: bytes) -> None:
    assert parse(decode(data)).system == "héllo"


def test_undecodable_modelfile_is_refused() -> None:
    with pytest.raises(ModelfileError, match="not UTF-8"):
        decode(b"FROM x\nSYSTEM \xff\xff\xff\n")
