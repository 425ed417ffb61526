"""benchmarks/soak_serve.py for a few seconds: a short soak of a real `llmrun serve`.

Good, slow, disconnecting and bad clients at once; every answer must equal its answer alone,
every refusal its 4xx in its API's shape, every health poll a 200, and the server must exit 0
on SIGTERM. No timings are asserted: the machine is small and shared.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load_soak() -> ModuleType:
    if "soak_serve" in sys.modules:
        return sys.modules["soak_serve"]
    sys.path.insert(0, str(BENCHMARKS))  # soak_serve imports bench_engine beside it
    try:
        spec = importlib.util.spec_from_file_location("soak_serve", BENCHMARKS / "soak_serve.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["soak_serve"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_short_soak_has_no_wrong_answers_no_unexpected_statuses_no_health_failures(
    smollm2: Path,
):
    soak = load_soak()
    config = soak.Config(clients=4, seconds=6, parallel=2, model=smollm2, prompts=2, seed=1)
    result = soak.soak(config)
    report = soak.render(result, "not measured")
    outcomes = result.stats.outcomes
    assert result.exit_code == 0, result.stderr_tail
    assert outcomes[soak.WRONG] == 0, report
    assert outcomes[soak.UNEXPECTED] == 0, report
    assert outcomes[soak.HEALTH] == 0, report
    assert outcomes[soak.OK] > 0, report
    assert result.stats.health_polls > 0 and result.stats.rss, report
    assert not result.failed and "verdict:    pass" in report
    # the solo answers are the counting prompts' obvious continuations
    first = soak.prompts(1)[0]
    assert result.solo[("completions", first.text)].startswith(" 6, 7")
    assert result.solo[("generate", first.text)] == result.solo[("completions", first.text)]


def test_the_arguments_are_bounded():
    soak = load_soak()
    config = soak.parse_args(["--clients", "3", "--seconds", "2.5", "--max-requests", "7"])
    assert (config.clients, config.seconds, config.max_requests) == (3, 2.5, 7)
    assert soak.parse_args(["--minutes", "2"]).seconds == 120
    assert soak.parse_args([]).seconds == 60
    for bad in (["--seconds", "0"], ["--clients", "0"], ["--minutes", "1", "--seconds", "3"]):
        with pytest.raises(SystemExit):
            soak.parse_args(bad)


def test_percentiles_and_error_shapes():
    soak = load_soak()
    values = [i / 100 for i in range(1, 101)]
    assert soak.percentile(values, 50) == 0.5
    assert soak.percentile(values, 99) == 0.99
    assert soak.percentile([], 50) is None
    openai_error = b'{"error": {"message": "m", "type": "t", "param": null, "code": null}}'
    assert soak.openai_shaped(openai_error) and not soak.ollama_shaped(openai_error)
    assert soak.ollama_shaped(b'{"error": "m"}') and not soak.openai_shaped(b'{"error": "m"}')
    assert not soak.openai_shaped(b"not json") and not soak.ollama_shaped(b"[1]")
