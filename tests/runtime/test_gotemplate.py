"""The Go text/template renderer, on the constructs Ollama templates use and on templates shaped
like those of popular model families (written here, following each family's prompt format)."""

from __future__ import annotations

import datetime as dt

import pytest

from formats.gotemplate import Template, TemplateError

CONVO = {
    "System": "Be brief.",
    "Messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
    ],
    "Tools": [],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather <now>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def render(source: str, data: object = None) -> str:
    return Template(source).render(data if data is not None else {})


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        ("a {{ .X }} b", {"X": "x"}, "a x b"),
        ("a  {{- .X -}}  b", {"X": "x"}, "axb"),
        ("a\n\n{{- /* comment */ -}}\n\nb", {}, "ab"),
        ("{{ .A.B.C }}", {"A": {"B": {"C": 3}}}, "3"),
        ("{{ .Missing }}|", {}, "|"),
        ("{{ if .X }}yes{{ else if .Y }}maybe{{ else }}no{{ end }}", {"Y": 1}, "maybe"),
        ("{{ if and .X .Y }}both{{ end }}{{ if or .X .Y }}one{{ end }}{{ if not .X }}!x{{ end }}", {"Y": 1}, "one!x"),
        ("{{ range .L }}[{{ . }}]{{ else }}empty{{ end }}", {"L": []}, "empty"),
        ("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}", {"L": ["a", "b"]}, "0=a;1=b;"),
        ("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", {"M": {"b": 2, "a": 1}}, "a1b2"),
        (
            "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}",
            {"L": [1, 2, 3, 4, 5]},
            "13",
        ),
        ("{{ with .X }}[{{ . }}]{{ else }}none{{ end }}", {"X": "v"}, "[v]"),
        ("{{ $x := 1 }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}", {"L": [5, 6]}, "6"),
        ("{{ $.Top }}{{ range .L }}{{ $.Top }}{{ end }}", {"Top": "t", "L": [1, 2]}, "ttt"),
        (
            '{{ len .L }} {{ index .L 1 }} {{ index .M "k" }} {{ slice .L 1 }}',
            {"L": [1, 2, 3], "M": {"k": "v"}},
            "3 2 v [2,3]",
        ),
        ('{{ eq .A "x" "y" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ ge 2 2 }}', {"A": "y"}, "true true true true"),
        ('{{ printf "%s=%d %q %v" "n" 5 "q" 1.5 }}', {}, 'n=5 "q" 1.5'),
        ('{{ .X | printf "%s!" }}', {"X": "hi"}, "hi!"),
        ("{{ (index .L 0).Name }}", {"L": [{"Name": "first"}]}, "first"),
        ("{{ json .V }}", {"V": {"a": "<b>", "n": [1, True, None]}}, '{"a":"\\u003cb\\u003e","n":[1,true,null]}'),
        ("{{ .F }} {{ .I }} {{ .B }}", {"F": 0.5, "I": 3, "B": False}, "0.5 3 false"),
        ("{{ `raw {{ .X }}` }}", {}, "raw {{ .X }}"),
        ("{{ range 3 }}{{ . }}{{ end }}", {}, "012"),
    ],
)
def test_constructs(source: str, data: object, expected: str) -> None:
    assert render(source, data) == expected


def test_go_field_names_find_ollama_json_keys() -> None:
    data = {"Messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}]}
    out = render(
        "{{ range .Messages }}{{ .Role }}:"
        "{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ end }}{{ end }}",
        data,
    )
    assert out == 'assistant:f{"x":1}'


def test_uses() -> None:
    assert Template("{{ range .Messages }}{{ end }}").uses("Messages")
    assert Template("{{ if .Tools }}{{ json $.Tools }}{{ end }}").uses("Tools")
    assert not Template("{{ .Prompt }}").uses("Messages")


@pytest.mark.parametrize(
    "source",
    [
        "{{ if .X }}",
        "{{ end }}",
        "{{ else }}",
        "{{ range .L }}{{ else if .X }}",
        "{{ .X",
        "{{ nosuchfunc }}",
        "{{ (.X }}",
        "{{ .X | }}",
        '{{ "unterminated }}',
        '{{ define "x" }}{{ end }}',
        "{{ $undefined }}",
        "{{ index .L 9 }}",
        "{{ break }}",
    ],
)
def test_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        render(source, {"L": [1]})


# Templates in the shapes of model families' prompt formats.

LLAMA3 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

You have these functions: {{ json .Tools }}
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""


def test_llama3_shape() -> None:
    out = render(LLAMA3, CONVO)
    assert out == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    with_tools = render(
        LLAMA3,
        {
            **CONVO,
            "Tools": TOOLS,
            "Messages": CONVO["Messages"]
            + [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
                },
                {"role": "tool", "content": "cold"},
            ],
        },
    )
    assert (
        'You have these functions: [{"type":"function","function":'
        '{"name":"get_weather","description":"Weather \\u003cnow\\u003e"' in with_tools
    )
    assert '{"name": "get_weather", "parameters": {"city":"Oslo"}}' in with_tools
    assert with_tools.endswith(
        "<|start_header_id|>ipython<|end_header_id|>\n\ncold<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def test_chatml_shape() -> None:
    assert render(CHATML, CONVO) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    )


GEMMA = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


def test_gemma_shape() -> None:
    assert render(GEMMA, CONVO) == (
        "<start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nWeather?<end_of_turn>\n<start_of_turn>model\n"
    )


MISTRAL = """{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (le (len (slice $.Messages $index)) 2) $.Tools }}[AVAILABLE_TOOLS] {{ json $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ if and (eq (len (slice $.Messages $index)) 1) $.System }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}</s>
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
{{- end }}]</s>
{{- end }}
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}}[/TOOL_RESULTS]
{{- end }}
{{- end }}"""


def test_mistral_shape() -> None:
    assert render(MISTRAL, CONVO) == "[INST] Hi[/INST] Hello!</s>[INST] Be brief.\n\nWeather?[/INST]"
    out = render(MISTRAL, {**CONVO, "Tools": TOOLS})
    assert out.startswith("[INST] Hi[/INST] Hello!</s>[AVAILABLE_TOOLS] [{")


PHI3 = """{{ if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{ if .Prompt }}<|user|>
{{ .Prompt }}<|end|>
{{ end }}<|assistant|>
{{ .Response }}<|end|>
"""


def test_legacy_phi3_shape_renders_one_turn() -> None:
    assert (
        render(PHI3, {"System": "S", "Prompt": "P", "Response": "R"})
        == "<|system|>\nS<|end|>\n<|user|>\nP<|end|>\n<|assistant|>\nR<|end|>\n"
    )


def test_current_date() -> None:
    assert render("{{ currentDate }}") == dt.date.today().isoformat()
