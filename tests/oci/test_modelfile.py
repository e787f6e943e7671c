"""The Modelfile grammar: every instruction, each quoting form, comments, and each error."""

from __future__ import annotations

import pytest

from registry.oci.modelfile import ModelfileError, parse, quote

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
        ("FROM x\nREQUIRES soon", r"\(line 2\): REQUIRES needs a version"),
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


def test_values_that_cannot_be_written_are_refused() -> None:
    with pytest.raises(ModelfileError, match="cannot be written"):
        quote('two lines\nwith """ inside')
