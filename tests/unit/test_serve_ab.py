"""bench/serve_ab.py: medians, ranges and whether two arms' runs can be told apart."""

from __future__ import annotations

from bench import serve_ab


def _runs(cpu: list[float]) -> list[dict[str, float]]:
    return [
        {"requests_per_s": 1000 / value, "p50_ms": value, "p99_ms": 10 * value}
        | {"server_cpu_ms_per_request": value}
        for value in cpu
    ]


def test_overlapping_runs_are_said_to_overlap():
    lines = serve_ab.compared({"base": _runs([2.0, 2.6, 2.3]), "head": _runs([2.2, 2.5, 2.4])})
    cpu = next(line for line in lines if line.startswith("- server_cpu_ms_per_request"))
    assert "base 2.300 (2.000-2.600), head 2.400 (2.200-2.500), head/base 1.043" in cpu
    assert cpu.endswith("the arms' runs overlap")


def test_separated_runs_are_said_to_be_beyond_each_other():
    lines = serve_ab.compared({"base": _runs([2.4, 2.6, 2.5]), "head": _runs([2.0, 2.1, 2.2])})
    assert all(line.endswith("every run of one arm beyond the other's") for line in lines)
    assert len(lines) == len(serve_ab.FIGURES)
