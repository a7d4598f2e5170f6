"""Prompt templates: which one a model gets, how it renders (sandboxed, equal to transformers), its stop strings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, cli

from backends.base import ModelInfo
from webui.paths import UnsafeName
from webui.templates.library import (
    TemplateFileError,
    get_template,
    list_templates,
    load_template_file,
    model_template_info,
)
from webui.templates.render import TemplateError, build_chat_prompt, derive_stops, render, select_template

COMPAT = REPO.parent / "shared" / "compat" / "text-generation-webui" / "instruction-templates"
COMPAT_FILES = sorted(COMPAT.glob("*.yaml")) if COMPAT.is_dir() else []
needs_compat = pytest.mark.skipif(not COMPAT_FILES, reason=f"text-generation-webui templates not found at {COMPAT}")
LIBRARY = list_templates()
BOS, EOS = "<s>", "</s>"

SYSTEM_AND_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
MULTI_TURN = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
]
SYSTEM_MULTI_TURN = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "  Capital of France?  \n"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": 'Say "ok" & <b>ünïcode</b> 🙂'},
]
TWO_USERS_IN_A_ROW = [{"role": "user", "content": "One"}, {"role": "user", "content": "Two"}]
WITH_NONE_FIELDS = [
    {"role": "user", "content": "Hi", "name": None},
    {"role": "assistant", "content": "Yo", "tool_calls": None},
]
CONVERSATIONS = [SYSTEM_AND_USER, MULTI_TURN, SYSTEM_MULTI_TURN, TWO_USERS_IN_A_ROW, WITH_NONE_FIELDS]

# Written the way model files write them: no whitespace control, so trim_blocks/lstrip_blocks decide the output;
# they also use what transformers defines (tools, loop controls, namespace, tojson, fields that may be None).
MODEL_STYLE_TEMPLATES = [
    """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'user' %}
        {{ '<|user|>\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'system' %}
        {{ '<|system|>\n' + message['content'] + eos_token }}
    {% else %}
        {{ '<|assistant|>\n' + message['content'] + eos_token }}
    {% endif %}
    {% if loop.last and add_generation_prompt %}
        {{ '<|assistant|>' }}
    {% endif %}
{% endfor %}""",
    """{% set ns = namespace(turns=0) %}
{% if tools is defined and tools is not none %}TOOLS {{ tools | tojson }}{% endif %}
{% for message in messages %}
{% if message.tool_calls is defined %}[calls {{ message.tool_calls | tojson }}]{% endif %}
{% if message.name is defined %}({{ message.name }}){% endif %}
{% set ns.turns = ns.turns + 1 %}
{% if ns.turns > 3 %}{% break %}{% endif %}
<{{ message.role }}>{{ message.content | trim }}</{{ message.role }}>
{% endfor %}
{% if add_generation_prompt %}<assistant>{% endif %}""",
]


def model(name: str = "some-model", architecture: str = "llama", chat_template: str | None = None, **kw) -> ModelInfo:
    return ModelInfo(name=name, loader="llama.cpp", path=f"{name}.gguf", architecture=architecture,
                     chat_template=chat_template, **kw)  # fmt: skip


# ---------------------------------------------------------------- the library


def test_the_library_has_the_common_formats_each_in_its_own_file():
    names = {t.name for t in LIBRARY}
    expected = {"chatml", "llama-2", "llama-3", "mistral", "gemma", "phi-3", "qwen", "zephyr", "command-r"}
    assert expected | {"alpaca", "vicuna", "airoboros", "plain"} <= names
    assert all(Path(t.source).parent == REPO / "presets" / "templates" for t in LIBRARY)


def test_template_names_are_case_insensitive():
    assert get_template("ChatML").name == "chatml"


def test_the_airoboros_template_is_the_seed_format():
    text = build_chat_prompt([{"role": "user", "content": "Hi"}], model(), choice="airoboros").text
    assert text.startswith("A chat between a curious user and an assistant.")
    assert text.endswith("\nUSER: Hi\nASSISTANT:")


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a\x00b", " ", "con", "sub/dir"])
def test_template_names_that_could_reach_outside_the_folder_are_refused(bad: str):
    with pytest.raises(UnsafeName):
        get_template(bad)
    with pytest.raises(UnsafeName):
        build_chat_prompt(MULTI_TURN, model(), choice=bad)


def test_an_unknown_template_name_lists_the_known_ones():
    with pytest.raises(TemplateError, match="no template named 'nope'.*chatml"):
        build_chat_prompt(MULTI_TURN, model(), choice="nope")


def test_a_yaml_file_without_an_instruction_template_is_refused_by_name(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("context: hello\n")
    with pytest.raises(TemplateFileError, match="broken.yaml has no 'instruction_template:'"):
        load_template_file(path)


# ---------------------------------------------------------------- selection order


def test_the_users_choice_wins_over_every_rule():
    info = model("airoboros-l2-13b", "gemma3", chat_template="{{ 'own' }}")
    chosen = select_template(info, choice="chatml")
    assert (chosen.name, chosen.chosen_by) == ("chatml", "user choice")


def test_a_models_yaml_rule_wins_over_the_template_in_the_model_file():
    info = model("airoboros-l2-13b.Q4_K_M", chat_template="{{ 'own' }}")
    chosen = select_template(info)
    assert chosen.name == "airoboros"
    assert chosen.chosen_by == "presets/models.yaml rule name ~ airoboros"


def test_a_models_yaml_rule_can_carry_default_settings():
    assert select_template(model("alpaca-7b")).settings == {"temperature": 0.7}


def test_a_rule_with_name_and_architecture_needs_both(tmp_path: Path):
    presets = _presets(tmp_path, "rules:\n  - name: hermes\n    architecture: '^mistral$'\n    template: chatml\n")
    assert select_template(model("hermes-7b", "mistral"), presets=presets).name == "chatml"
    assert select_template(model("hermes-7b", "llama"), presets=presets).chosen_by == "fallback"


def test_the_template_in_the_model_file_wins_over_the_architecture():
    own = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    prompt = build_chat_prompt(MULTI_TURN, model("g", "gemma3", chat_template=own))
    assert prompt.chosen_by == "chat template in the model file"
    assert prompt.text.startswith("[user] Hi\n[assistant] Hello!")


@pytest.mark.parametrize(
    ("architecture", "template"),
    [("gemma", "gemma"), ("gemma2", "gemma"), ("gemma3", "gemma"), ("qwen2", "qwen"), ("phi3", "phi-3")],
)
def test_a_model_without_a_template_gets_the_one_known_for_its_architecture(architecture: str, template: str):
    chosen = select_template(model("x", architecture))
    assert (chosen.name, chosen.chosen_by) == (template, f"known for architecture {architecture}")


def test_anything_else_gets_the_plain_fallback():
    """``llama`` names no format: Llama 2, Llama 3 and Mistral fine-tunes all report that architecture."""
    prompt = build_chat_prompt(SYSTEM_AND_USER, model("x", "llama"))
    assert (prompt.template, prompt.chosen_by) == ("plain", "fallback")
    assert prompt.text == "Be brief.\n\nUser: Hi\nAssistant:"


def test_the_embedded_model_file_has_no_template_so_it_gets_gemma_turns(gemma_path: Path):
    info = model_template_info(gemma_path)
    assert info.architecture == "gemma3" and info.chat_template is None
    prompt = build_chat_prompt(SYSTEM_AND_USER, info)
    assert (prompt.template, prompt.chosen_by) == ("gemma", "known for architecture gemma3")
    assert prompt.text == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_a_leading_bos_is_left_to_the_loader_which_adds_it_when_tokenizing():
    prompt = build_chat_prompt(MULTI_TURN, model("g", "gemma3", bos_token="<bos>"))
    assert prompt.text.startswith("<start_of_turn>user\nHi")
    assert render(get_template("gemma").text, MULTI_TURN, bos_token="<bos>").startswith("<bos><start_of_turn>")


def test_a_hugging_face_folder_template_is_read_from_chat_template_jinja(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}")
    info = model_template_info(tmp_path)
    assert (info.architecture, info.bos_token, info.eos_token) == ("llama", "<s>", "</s>")
    assert build_chat_prompt([{"role": "user", "content": "Hi"}], info).text == "Hi</s>"


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        ("rules:\n  - name: '(unclosed'\n    template: chatml\n", "bad regular expression '\\(unclosed'"),
        ("rules:\n  - name: x\n    template: missing\n", "no template named 'missing'"),
        ("rules:\n  - name: x\n    template: ../x\n", "may not contain path separators"),
        ("rules:\n  - template: chatml\n", "needs a 'name:' or 'architecture:' pattern"),
    ],
)
def test_a_broken_models_yaml_is_a_clear_error(tmp_path: Path, rules: str, error: str):
    with pytest.raises(ValueError, match=error):
        build_chat_prompt(MULTI_TURN, model("x"), presets=_presets(tmp_path, rules))


def _presets(tmp_path: Path, rules: str) -> Path:
    """A presets folder with our template library and the given models.yaml."""
    (tmp_path / "templates").mkdir()
    for t in LIBRARY:
        (tmp_path / "templates" / Path(t.source).name).write_text(Path(t.source).read_text())
    (tmp_path / "models.yaml").write_text(rules)
    return tmp_path


# ---------------------------------------------------------------- the sandbox and bad templates

ESCAPES = [
    "{{ ''.__class__ }}",  # Jinja's sandbox alone would render this as an empty string
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'Popen' %}"
    "{{ c('touch MARKER', shell=True) }}{% endif %}{% endfor %}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}x",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_a_template_reaching_for_python_internals_fails_clearly_and_runs_nothing(template: str, tmp_path: Path):
    """CVE-2024-34359: a model file's chat template is untrusted code."""
    marker = tmp_path / "pwned"
    evil = model("evil", chat_template=template.replace("MARKER", str(marker)))
    with pytest.raises(TemplateError, match="template 'model' tried to reach Python internals and was stopped"):
        build_chat_prompt(MULTI_TURN, evil)
    assert not marker.exists()


def test_a_template_with_a_syntax_error_is_named_in_the_error(tmp_path: Path):
    presets = _presets(tmp_path, "")
    (presets / "templates" / "mine.yaml").write_text(
        "instruction_template: |-\n  {% for m in messages %}\n  {{ m.content }}\n"
    )
    with pytest.raises(TemplateError, match="template 'mine' has a Jinja syntax error on line 2: .*'endfor'"):
        build_chat_prompt(MULTI_TURN, model(), choice="mine", presets=presets)


def test_raise_exception_in_a_template_becomes_a_clear_error():
    strict = "{% if messages[0].role != 'system' %}{{ raise_exception('a system message is required') }}{% endif %}"
    with pytest.raises(TemplateError, match="refused the conversation: a system message is required"):
        build_chat_prompt(MULTI_TURN, model(chat_template=strict))


def test_the_helpers_model_templates_expect_are_there():
    text = "{{ strftime_now('%Y') | length }}|{{ messages | tojson }}|{{ bos_token }}|{{ eos_token }}|{{ dict(a=1) }}"
    out = render(text, [{"role": "user", "content": "é<b>"}], bos_token="<s>", eos_token="</s>")
    assert out == '4|[{"role": "user", "content": "é<b>"}]|<s>|</s>|{\'a\': 1}'


def test_unknown_roles_and_empty_conversations_are_refused():
    with pytest.raises(ValueError, match="unknown message role 'tool'"):
        build_chat_prompt([{"role": "tool", "content": "x"}], model())
    with pytest.raises(TemplateError, match="empty"):
        build_chat_prompt([], model())


# ---------------------------------------------------------------- stop strings


@pytest.mark.parametrize(
    ("template", "stops"),
    [
        ("gemma", ["<end_of_turn>", "<start_of_turn>", "</s>"]),
        ("chatml", ["<|im_end|>", "<|im_start|>", "</s>"]),
        ("llama-3", ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "</s>"]),
        ("plain", ["\nUser:", "</s>"]),
        ("alpaca", ["\n### Instruction:", "</s>"]),
        ("airoboros", ["\nUSER:", "</s>"]),
        ("vicuna", ["</s>", "USER:"]),
    ],
)
def test_stop_strings_come_from_the_template_end_of_turn_and_next_user_prefix(template: str, stops: list[str]):
    assert derive_stops(get_template(template).text, template, BOS, EOS) == stops


def test_the_chat_path_gets_gemma_and_plain_stops_without_an_eos_token():
    assert build_chat_prompt(MULTI_TURN, model("g", "gemma3")).stop == ["<end_of_turn>", "<start_of_turn>"]
    assert build_chat_prompt(MULTI_TURN, model("x", "llama")).stop == ["\nUser:"]


def _all_templates() -> list:
    found = [pytest.param(t, id=f"model-style:{i}") for i, t in enumerate(MODEL_STYLE_TEMPLATES)]
    found += [pytest.param(t.text, id=f"library:{t.name}") for t in LIBRARY]
    return found + [pytest.param(load_template_file(p).text, id=f"compat:{p.stem}") for p in COMPAT_FILES]


@pytest.mark.parametrize("text", _all_templates())
def test_every_templates_stops_end_an_assistant_turn_before_the_next_user_message(text: str):
    """Where the next user turn has a visible prefix a stop lies in it (Galactica's one-shot formats have none)."""
    chat = [*MULTI_TURN[:1], {"role": "assistant", "content": "ANSWER"}, {"role": "user", "content": "QUESTION"}]
    rendered = render(text, chat, bos_token=BOS, eos_token=EOS, add_generation_prompt=False)
    between = rendered[rendered.index("ANSWER") + len("ANSWER") : rendered.index("QUESTION")]
    stops = derive_stops(text, "t", BOS, EOS)
    assert any(s in between for s in stops) or not between.strip(), (between, stops)
    assert all(re.search(r"\w", s) for s in stops), stops  # never a bare ":" that would cut replies short


# ---------------------------------------------------------------- text-generation-webui files, transformers


@needs_compat
def test_text_generation_webui_instruction_templates_load_as_they_are():
    assert len(COMPAT_FILES) > 20
    for path in COMPAT_FILES:
        text = render(load_template_file(path).text, SYSTEM_MULTI_TURN, name=path.stem)
        assert "Paris" in text and "ünïcode" in text, path.name


@pytest.fixture(scope="module")
def tokenizer():
    """A real transformers tokenizer whose special tokens are <s> and </s>; only its chat templating is used."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = tokenizers.models.WordLevel({"<unk>": 0, BOS: 1, EOS: 2}, unk_token="<unk>")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(vocab), bos_token=BOS, eos_token=EOS
    )


@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["generation-prompt", "no-generation-prompt"])
@pytest.mark.parametrize("text", _all_templates())
def test_rendering_equals_transformers_apply_chat_template(tokenizer, text: str, add_generation_prompt: bool):
    for chat in CONVERSATIONS:
        try:
            expected = tokenizer.apply_chat_template(
                chat, chat_template=text, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception:  # the template refuses this conversation: ours must refuse it too
            with pytest.raises(TemplateError):
                render(text, chat, bos_token=BOS, eos_token=EOS, add_generation_prompt=add_generation_prompt)
            continue
        assert render(text, chat, bos_token=BOS, eos_token=EOS, add_generation_prompt=add_generation_prompt) == expected


def test_equivalence_covers_a_template_that_refuses_a_conversation(tokenizer):
    """The Gemma model files' own template insists on alternating roles; both renderers must refuse alike."""
    alternating = (
        "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ m.content }}{% endfor %}"
    )
    with pytest.raises(Exception, match="must alternate"):
        tokenizer.apply_chat_template(
            TWO_USERS_IN_A_ROW[:1] + MULTI_TURN[:1], chat_template=alternating, tokenize=False
        )
    with pytest.raises(TemplateError, match="must alternate"):
        render(alternating, TWO_USERS_IN_A_ROW)


# ---------------------------------------------------------------- the command line


def test_cli_lists_the_templates_with_their_source():
    plain = cli("templates", "list")
    assert plain.returncode == 0, plain.stderr
    assert any(line.split()[0] == "gemma" and line.endswith("gemma.yaml") for line in plain.stdout.splitlines())
    listed = json.loads(cli("templates", "list", "--json").stdout)
    assert {"name": "chatml", "source": str(REPO / "presets" / "templates" / "chatml.yaml")} in listed


def test_cli_renders_the_exact_prompt_of_a_template(tmp_path: Path):
    messages = tmp_path / "chat.json"
    messages.write_text(json.dumps(SYSTEM_AND_USER))
    out = cli("templates", "render", "chatml", "--messages", str(messages))
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "user choice" in out.stderr and "<|im_end|>" in out.stderr
    bare = cli("templates", "render", "chatml", "--messages", str(messages), "--no-generation-prompt")
    assert bare.stdout == out.stdout.removesuffix("<|im_start|>assistant\n")


def test_cli_renders_what_the_selection_chooses_for_a_model(tmp_path: Path, models_dir: Path, gemma_path: Path):
    messages = tmp_path / "chat.json"
    messages.write_text(json.dumps({"messages": MULTI_TURN}))
    out = cli("templates", "render", gemma_path.name, "--messages", str(messages), "--models-dir", str(models_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout == build_chat_prompt(MULTI_TURN, model("g", "gemma3")).text
    assert "known for architecture gemma3" in out.stderr


@pytest.mark.parametrize(
    ("target", "messages", "error"),
    [
        ("chatml", "missing.json", "cannot read messages"),
        ("chatml", '{"role": "user"}', "must hold a JSON list"),
        ("../x", "[]", "model not found"),
    ],
)
def test_cli_render_errors_are_one_clear_line(tmp_path: Path, target: str, messages: str, error: str):
    path = tmp_path / "chat.json"
    if messages != "missing.json":
        path.write_text(messages)
    out = cli(
        "templates", "render", target, "--messages", str(path if messages != "missing.json" else tmp_path / messages)
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and error in out.stderr
