"""Prompt building (Go templates with and without .Messages, Jinja chat templates) and tool-call
parsing of model output."""

from __future__ import annotations

import pytest

from formats.gotemplate import TemplateError
from runtime.prompts import Message, PromptTemplate, collate, looks_like_tool_call, parse_tool_calls

LEGACY = "{{ if .System }}<s>{{ .System }}</s>{{ end }}<u>{{ .Prompt }}</u><a>{{ .Response }}</a>"
MESSAGES = (
    "{{ if .System }}S:{{ .System }}\n{{ end }}"
    '{{ range .Messages }}{{ if ne .Role "system" }}{{ .Role }}:{{ .Content }}\n{{ end }}{{ end }}assistant:'
)
JINJA = (
    "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_legacy_template_is_rendered_turn_by_turn_and_cut_at_response() -> None:
    template = PromptTemplate(LEGACY, None)
    assert not template.uses_messages
    prompt = template.render(
        [
            Message("system", "Be brief."),
            Message("user", "Hi"),
            Message("assistant", "Hello"),
            Message("user", "Bye"),
        ]
    )
    assert prompt == "<s>Be brief.</s><u>Hi</u><a>Hello</a><u>Bye</u><a>"


def test_messages_template_gets_the_whole_conversation() -> None:
    template = PromptTemplate(MESSAGES, "{{ ignored }}")  # a Go template wins over the GGUF's Jinja
    assert template.uses_messages
    prompt = template.render([Message("system", "A"), Message("system", "B"), Message("user", "Hi")])
    assert prompt == "S:A\n\nB\nuser:Hi\nassistant:"


def test_jinja_chat_template_from_the_gguf() -> None:
    template = PromptTemplate(None, JINJA, bos="<bos>")
    assert template.uses_messages
    assert template.render([Message("user", "Hi")]) == "<bos><user>Hi</user><assistant>"


def test_jinja_raise_exception_and_sandbox_errors_are_template_errors() -> None:
    template = PromptTemplate(None, "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render([Message("user", "Hi")])
    with pytest.raises(TemplateError, match="chat template"):
        PromptTemplate(None, "{% for %}")
    sandboxed = PromptTemplate(None, "{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        sandboxed.render([Message("user", "Hi")])


def test_no_template_means_the_bare_prompt() -> None:
    assert PromptTemplate(None, None).render([Message("user", "just this")]) == "just this"


def test_suffix_renders_fill_in_the_middle() -> None:
    template = PromptTemplate("<pre>{{ .Prompt }}<suf>{{ .Suffix }}<mid>", None)
    assert template.render([Message("user", "def f():")], suffix="return 1") == "<pre>def f():<suf>return 1<mid>"


def test_collate_joins_systems_and_merges_consecutive_turns() -> None:
    system, turns = collate(
        [Message("system", "A"), Message("user", "x"), Message("user", "y"), Message("system", "B")]
    )
    assert system == "A\n\nB"
    assert [(m.role, m.content) for m in turns] == [("system", "A"), ("user", "x\n\ny"), ("system", "B")]
    _, kept = collate([Message("user", "x", images=["aW1n"]), Message("user", "y")])
    assert len(kept) == 2  # a turn with images is not merged away


TOOLS = {"get_weather", "add"}


@pytest.mark.parametrize(
    ("text", "names", "rest"),
    [
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', ["get_weather"], ""),
        ('<tool_call>{"name": "add", "parameters": {"a": 1}}</tool_call>', ["add"], ""),
        (
            '[TOOL_CALLS] [{"name": "add", "arguments": {}}, {"name": "get_weather", "arguments": {}}]',
            ["add", "get_weather"],
            "",
        ),
        ('Sure. {"function": {"name": "add", "arguments": "{\\"a\\": 2}"}} done', ["add"], "Sure.  done"),
        ('```json\n{"name": "add", "arguments": {"a": 1}}\n```', ["add"], ""),
    ],
)
def test_tool_calls_are_found_in_the_shapes_models_write(text: str, names: list[str], rest: str) -> None:
    calls, left = parse_tool_calls(text, TOOLS)
    assert [c["function"]["name"] for c in calls] == names
    assert all(isinstance(c["function"]["arguments"], dict) for c in calls)
    assert left == rest


def test_unknown_tools_and_plain_json_are_not_tool_calls() -> None:
    assert parse_tool_calls('{"name": "rm_rf", "arguments": {}}', TOOLS) == ([], '{"name": "rm_rf", "arguments": {}}')
    assert parse_tool_calls('{"answer": 42}', TOOLS)[0] == []
    assert parse_tool_calls('{"name": "add", "arguments": "not json"}', TOOLS)[0] == []
    assert parse_tool_calls("no calls here", TOOLS) == ([], "no calls here")


def test_streamed_output_is_held_back_only_when_it_may_be_a_call() -> None:
    assert looks_like_tool_call('  {"na')
    assert looks_like_tool_call("<tool_call>")
    assert looks_like_tool_call("[TOOL_CALLS]")
    assert not looks_like_tool_call("The weather is")
