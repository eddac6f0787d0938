"""The examples of README.md and docs/*.md work as pasted: every bash and python block that talks
to the service runs, unchanged but for the port, in the repository root against a real
`bentoml serve` of a small Fashion-MNIST model, and answers what the docs show. A block that
talks to the service and cannot run here carries a skip marker (tests/support/doc_examples.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.support import doc_examples, servers
from tests.support.servers import REPO_ROOT

SERVICE_BLOCKS = doc_examples.service_blocks()
RUNNABLE = [block for block in SERVICE_BLOCKS if block.runnable()]
# A documented answer's keys: `"name":` anywhere in it, nested ones included.
DOCUMENTED_KEY = re.compile(r'"([^"]+)"\s*:')


def test_every_block_that_talks_to_the_service_is_run_or_excluded() -> None:
    assert RUNNABLE, "no runnable example found: has the parser lost the blocks?"
    for block in SERVICE_BLOCKS:
        assert block.runnable() or block.skip_reason, (
            f"{block.name}: a ```{block.language} block that talks to the service, which the"
            f" test cannot run ({', '.join(doc_examples.RUNNERS)} only); make it one of those"
            " or put `<!-- docs-test: skip (why) -->` right above it"
        )


def test_the_parser_finds_commands_and_their_documented_answers(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- docs-test: skip (needs Docker) -->\n```bash\ndocker run -p 3000:3000 x\n```\n\n"
        "```bash\ncurl -s -d @a.json \\\n  http://127.0.0.1:3000/predict   # one\n"
        '# [{"label": 1, ...}]\ncurl -s http://127.0.0.1:3000/v2  # {"name": "x"}\n```\n\n'
        "```bash\nmake serve   # on http://127.0.0.1:3000\n```\n"
    )
    skipped, predict, serve = doc_examples.blocks(page)
    assert skipped.skip_reason == "needs Docker" and skipped.talks_to_service()
    assert predict.runnable() and not serve.talks_to_service()
    assert predict.commands() == [
        doc_examples.Command(
            "curl -s -d @a.json http://127.0.0.1:3000/predict", ('[{"label": 1, ...}]',)
        ),
        doc_examples.Command("curl -s http://127.0.0.1:3000/v2", ('{"name": "x"}',)),
    ]
    assert "127.0.0.1:4321/v2" in predict.code_for("127.0.0.1:4321")


def test_a_marker_away_from_a_fence_is_an_error(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: skip (why) -->\n\n```bash\ncurl http://127.0.0.1:3000\n```\n")
    with pytest.raises(doc_examples.MarkerError, match="right above"):
        doc_examples.blocks(page)


def json_values(text: str) -> list[Any]:
    """The JSON values printed one after another (curl prints no newline after an answer)."""
    decoder, values, index, text = json.JSONDecoder(), [], 0, text.strip()
    while index < len(text):
        while text[index].isspace():
            index += 1
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            raise AssertionError(f"not a JSON answer at {text[index : index + 200]!r}") from error
        values.append(value)
    return values


def keys_of(value: Any) -> set[str]:
    """Every key of every object in a JSON value."""
    if isinstance(value, dict):
        return set(value).union(*(keys_of(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_of(item) for item in value))
    return set()


def run(block: doc_examples.Block, url: str) -> subprocess.CompletedProcess:
    code = block.code_for(url.removeprefix("http://"))
    command = ["bash", "-e", "-o", "pipefail", "-c", code]
    if block.language == "python":
        command = [sys.executable, "-c", code]
    # The venv's bin leads PATH, as after `make install`: `python` is the project's.
    environment = os.environ | {"PATH": f"{servers.BIN_DIR}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=environment
    )


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[block.name for block in RUNNABLE])
def test_the_example_works_as_written(block: doc_examples.Block, fashion_served) -> None:
    result = run(block, fashion_served.url)
    assert result.returncode == 0, f"{block.name} exited {result.returncode}:\n{result.stderr}"
    assert result.stdout.strip(), f"{block.name} printed nothing:\n{result.stderr}"
    if block.language != "bash":
        return
    answers = json_values(result.stdout)
    commands = block.commands()
    assert len(answers) == len(commands), (block.name, commands, result.stdout[:500])
    for command, answer in zip(commands, answers, strict=True):
        items = answer if isinstance(answer, list) else [answer]
        assert not any(isinstance(item, dict) and "error" in item for item in items), (
            f"{block.name}: `{command.text}` answered {answer}"
        )
        documented = {key for shown in command.documented for key in DOCUMENTED_KEY.findall(shown)}
        assert documented <= keys_of(answer), (
            f"{block.name}: `{command.text}` shows keys {sorted(documented - keys_of(answer))}"
            f" that its real answer lacks: {json.dumps(answer)[:500]}"
        )
