"""POST /v1/chat/completions (issue 22, item 1) with the official openai client's chat API, whole
and streamed: the reply is the engine's continuation of the prompt the documented template makes
(a system message first, like any other; the texts a blank line apart), a custom --chat-template
is used as given, and bad messages are a 400 naming `messages`."""
import json
import subprocess
import sys

import pytest

httpx = pytest.importorskip("httpx")  # the test extra; the fast tier runs without it
openai = pytest.importorskip("openai")
pytest.importorskip("jinja2")
from serving import Served  # noqa: E402

from micromixer_edge.runtime.engine import GenerateOptions  # noqa: E402
from micromixer_edge.runtime.generate import generate  # noqa: E402
from micromixer_edge.runtime.model import MixerModel  # noqa: E402

MESSAGES = [{"role": "system", "content": "A story for children."},
            {"role": "user", "content": "Once upon a time, a little dog"}]


def _want(bundled, prompt, n, seed):
    return generate(MixerModel(bundled["int8"]), prompt, GenerateOptions.of(max_new_tokens=n, seed=seed))


def test_chat_with_the_openai_client_whole_and_streamed(server, bundled):
    want = _want(bundled, "A story for children.\n\nOnce upon a time, a little dog\n\n", 80, 3)
    done = server.client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=80, seed=3)
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content == want
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.completion_tokens == len(want.encode())
    chunks = list(server.client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=80, seed=3,
                                                        stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == done.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    newer = server.client.chat.completions.create(model="m", messages=MESSAGES, max_completion_tokens=80, seed=3)
    assert newer.choices[0].message.content == want  # OpenAI's newer name for max_tokens


def test_text_parts_are_text(server, bundled):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Lily and "}, {"type": "text", "text": "Ben"}]}]
    done = server.client.chat.completions.create(model="m", messages=parts, max_tokens=40, seed=1)
    assert done.choices[0].message.content == _want(bundled, "Lily and Ben\n\n", 40, 1)


@pytest.mark.parametrize("messages", [None, [], "hi", [{"role": "user"}], [{"role": "robot", "content": "x"}],
                                      [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
                                      [{"role": "user", "content": "a\ud800b"}], [{"content": "x"}], [42]])
def test_bad_messages_are_a_400_naming_messages(server, messages):
    body = json.dumps({"messages": messages, "max_tokens": 3}).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert server.client.chat.completions.create(model="m", messages=MESSAGES[1:], max_tokens=2).choices


def test_a_custom_chat_template(bundled, tmp_path):
    (tmp_path / "t.jinja").write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                                      "{{ messages[99].content }}")
    s = Served(bundled["int8"], "--chat-template", str(tmp_path / "t.jinja"))
    try:
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5})
        assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]  # messages[99]
    finally:
        assert s.stop() == 0
    (tmp_path / "t.jinja").write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    s = Served(bundled["int8"], "--chat-template", str(tmp_path / "t.jinja"))
    try:
        done = s.client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=40, seed=2)
        prompt = "[system] A story for children.\n[user] Once upon a time, a little dog\n"
        assert done.choices[0].message.content == _want(bundled, prompt, 40, 2)
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("text, message", [("{% for %}", "not a Jinja template"), (None, "no such file")])
def test_a_bad_template_file_is_one_line_and_exit_1(bundled, tmp_path, text, message):
    path = tmp_path / "bad.jinja"
    if text is not None:
        path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "micromixer_edge.serve.cli", str(bundled["int8"]), "--port", "0",
                           "--chat-template", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_what_outsiders_found(server, bundled, tmp_path):
    """max_completion_tokens wins over max_tokens; empty text parts are a 400; a template that
    raises anything on a request's messages is that request's 400, not a 500."""
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"messages": MESSAGES, "max_tokens": 50, "max_completion_tokens": 3, "ignore_eos": True})
    assert r.json()["usage"]["completion_tokens"] == 3
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": []}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": MESSAGES, "max_completion_tokens": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    (tmp_path / "t.jinja").write_text("{{ 1 // (messages|length - 1) }}{{ messages[0].content }}")
    s = Served(bundled["int8"], "--chat-template", str(tmp_path / "t.jinja"))
    try:
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": MESSAGES[1:], "max_tokens": 3})
        assert r.status_code == 400 and "ZeroDivisionError" in r.json()["error"]["message"]
        assert httpx.post(s.url + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3}).status_code == 200
    finally:
        assert s.stop() == 0


# Llama 2's chat template as Hugging Face ships it (tokenizer_config.json), as vLLM and llama.cpp take it
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")


def test_a_hugging_face_chat_template(bundled, tmp_path):
    """Written against HF's variables (bos_token, eos_token, raise_exception): the prompt is the
    template's text with bos_token empty (the server adds bos) and eos_token the eos byte; its
    raise_exception is the request's 400."""
    (tmp_path / "llama2.jinja").write_text(LLAMA2)
    s = Served(bundled["int8"], "--chat-template", str(tmp_path / "llama2.jinja"))
    try:
        messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell a story."},
                    {"role": "assistant", "content": "Once upon a time."}, {"role": "user", "content": "More!"}]
        want = "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nTell a story. [/INST] Once upon a time. \x02[INST] More! [/INST]"
        tokens = httpx.post(s.url + "/tokenize", json={"messages": messages}, timeout=30).json()["tokens"]
        assert bytes(tokens).decode() == want
        done = s.client.chat.completions.create(model="m", messages=messages, max_tokens=30, seed=4)
        assert done.choices[0].message.content == _want(bundled, want, 30, 4)
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": messages[2:], "max_tokens": 3}, timeout=30)
        assert r.status_code == 400 and "roles must alternate" in r.json()["error"]["message"]
    finally:
        assert s.stop() == 0


def test_templates_render_as_hugging_face_renders_them(server, tmp_path):
    """A model's template as transformers' apply_chat_template renders it (trim_blocks,
    lstrip_blocks, loop controls, {% generation %}, tools undefined-but-falsy, no trailing
    newline of the file): Zephyr's from the transformers docs, and one in Qwen 2.5's style."""
    from micromixer_edge.serve.chat import ChatTemplate
    zephyr = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content']"
              " + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] +"
              " eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n"
              "{% endif %}\n{% endfor %}\n")
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert ChatTemplate(zephyr)(turns) == "<|user|>\nhi\x02\n<|assistant|>\nyo\x02\n<|assistant|>\n"
    qwen = ("{%- if tools %}{{ raise_exception('no tools') }}{%- endif %}\n{%- for m in messages %}\n"
            "{%- if m.role == 'assistant' and not m.tool_calls %}{% generation %}{{ m.content }}{% endgeneration %}"
            "{%- else %}<|{{ m.role }}|>{{ m.content }}{%- endif %}\n{%- if loop.index == 2 %}{% break %}{% endif %}\n"
            "{%- endfor %}\n{%- if add_generation_prompt %}<|assistant|>{% endif %}\n")
    assert ChatTemplate(qwen)(turns + turns) == "<|user|>hiyo<|assistant|>"
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "Once"}],
        "max_tokens": 3}, timeout=30)
    assert r.status_code == 200  # an assistant turn's null content (OpenAI's, after tool calls) is ""


def test_a_chat_reply_without_max_tokens_runs_to_its_end(server, bundled):
    """Not cut at OpenAI's completions default (16); it ends at end-of-story, and its logprobs,
    whole or streamed, are the content's bytes: chat never lists the eos byte."""
    kw = dict(model="m", messages=MESSAGES, seed=5, logprobs=True)
    c = server.client.chat.completions.create(**kw).choices[0]
    assert c.finish_reason == "stop" and len(c.message.content.encode()) > 16
    assert c.message.content == _want(bundled, "A story for children.\n\nOnce upon a time, a little dog\n\n", 4096, 5)
    assert b"".join(bytes(e.bytes) for e in c.logprobs.content) == c.message.content.encode()
    chunks = list(server.client.chat.completions.create(**kw, stream=True))
    listed = [e for ch in chunks for choice in ch.choices if choice.logprobs for e in choice.logprobs.content]
    assert b"".join(bytes(e.bytes) for e in listed) == c.message.content.encode()
    assert all(ch.choices[0].delta.content or ch.choices[0].delta.role or ch.choices[0].finish_reason
               for ch in chunks if ch.choices)  # no empty chunk (eos alone sends nothing)
