"""mixer-serve with the clients people point at an OpenAI-compatible server (issue 22, item 8):
LangChain's OpenAI (invoke, and batch, which sends a list of prompts) and ChatOpenAI (invoke with
a system message, stream). Each answer is the engine's own for the prompt the server builds."""
import pytest

pytest.importorskip("starlette")
langchain_openai = pytest.importorskip("langchain_openai")  # the test extra

from micromixer_edge.runtime.engine import GenerateOptions  # noqa: E402
from micromixer_edge.runtime.generate import generate  # noqa: E402
from micromixer_edge.runtime.model import MixerModel  # noqa: E402


def _greedy(bundled, prompt, n=30):
    return generate(MixerModel(bundled["int8"]), prompt, GenerateOptions.of(max_new_tokens=n, temperature=0))


def _kw(server, bundled):
    return dict(base_url=server.url + "/v1", api_key="none", model=bundled["int8"].stem, max_tokens=30,
                temperature=0, max_retries=0, timeout=60)


def test_langchain_openai_invoke_and_batch(server, bundled):
    llm = langchain_openai.OpenAI(**_kw(server, bundled))
    assert llm.invoke("Once upon a time") == _greedy(bundled, "Once upon a time")
    prompts = ["Lily and Ben", "The sun was", "Mom said,"]
    assert llm.batch(prompts) == [_greedy(bundled, p) for p in prompts]


def test_langchain_chat_openai_invoke_and_stream(server, bundled):
    chat = langchain_openai.ChatOpenAI(**_kw(server, bundled))
    reply = chat.invoke([("system", "A story for children."), ("human", "Tom had a big red")])
    assert reply.content == _greedy(bundled, "A story for children.\n\nTom had a big red\n\n")
    streamed = "".join(chunk.content for chunk in chat.stream("Once upon a time"))
    assert streamed == _greedy(bundled, "Once upon a time\n\n")


def test_the_llm_cli_with_a_system_prompt(server, bundled, tmp_path):
    """Simon Willison's `llm` with the server as an OpenAI-compatible chat model (its default
    kind): the system prompt comes first, by the documented default template."""
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("llm")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f'- model_id: mixer\n  model_name: {bundled["int8"].stem}\n  api_base: "{server.url}/v1"\n')
    llm = Path(sys.executable).parent / "llm"
    env = {"LLM_USER_PATH": str(tmp_path), "PATH": str(llm.parent), "HOME": str(tmp_path)}
    for stream in ([], ["--no-stream"]):
        out = subprocess.run([str(llm), "-m", "mixer", "--system", "Be brief.", "-o", "temperature", "0",
                              "-o", "max_tokens", "30", *stream, "Once upon a time"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout == _greedy(bundled, "Be brief.\n\nOnce upon a time\n\n") + "\n"
