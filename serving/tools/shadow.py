"""Compare the champion and its shadow on what was served: `python -m serving.tools.shadow`.

    python -m serving.tools.shadow --log monitoring            # every pair of versions recorded
    python -m serving.tools.shadow --log monitoring --json shadow.json

Reads the shadow's records (`<MONITOR_DIR>/shadow/`, written by `serving.shadow` while the service
shadows a version) and prints, per champion and shadow version: how many served images the shadow
also answered, how often it chose the champion's class, each version's mean confidence, the
classes they disagree on most, and the shadow's time per call. The champion's own time is in
`/metrics` (`classifier_forward_seconds{version}`), beside the shadow's.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from serving.shadow import MONITOR_NAME

FIELDS = ("champion_label", "shadow_label", "agree", "champion_confidence", "shadow_confidence")


def read_rows(folder: Path) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], int]:
    """The shadow's rows under `folder` (a MONITOR_DIR, or its shadow/ folder) by (champion,
    shadow) version, and how many lines could not be read."""
    root = folder / MONITOR_NAME if (folder / MONITOR_NAME).is_dir() else folder
    if not root.is_dir():
        raise SystemExit(f"{folder}: no shadow records (is the service shadowing? SHADOW_FILE)")
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    unreadable = 0
    for path in sorted(root.rglob("data.*.log*")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                pair = (str(row["champion_version"]), str(row["shadow_version"]))
                values = {name: float(row[name]) for name in FIELDS} | {
                    "shadow_ms": float(row["shadow_ms"])
                }
            except (ValueError, KeyError, TypeError):
                unreadable += bool(line.strip())
                continue
            pairs[pair].append(values)
    return pairs, unreadable


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What one pair's rows say: images, agreement, confidences, disagreements, shadow time."""
    table = {name: np.array([row[name] for row in rows]) for name in (*FIELDS, "shadow_ms")}
    differ = table["agree"] == 0
    confusions = Counter(
        zip(
            table["champion_label"][differ].astype(int).tolist(),
            table["shadow_label"][differ].astype(int).tolist(),
            strict=True,
        )
    )
    return {
        "images": len(rows),
        "agreement": float(table["agree"].mean()),
        "champion_confidence": float(table["champion_confidence"].mean()),
        "shadow_confidence": float(table["shadow_confidence"].mean()),
        "disagreements": [
            {"champion": champion, "shadow": shadow, "images": count}
            for (champion, shadow), count in confusions.most_common(5)
        ],
        "shadow_ms_p50": float(np.percentile(table["shadow_ms"], 50)),
        "shadow_ms_p99": float(np.percentile(table["shadow_ms"], 99)),
    }


def describe(champion: str, shadow: str, result: dict[str, Any]) -> str:
    lines = [
        f"champion v{champion}, shadow v{shadow}: {result['images']} images, the same class for"
        f" {result['agreement']:.1%}; mean confidence {result['champion_confidence']:.3f} vs"
        f" {result['shadow_confidence']:.3f}; shadow call {result['shadow_ms_p50']:.2f} ms"
        f" (p99 {result['shadow_ms_p99']:.2f} ms)"
    ]
    for item in result["disagreements"]:
        lines.append(f"  class {item['champion']} -> {item['shadow']}: {item['images']} image(s)")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving.tools.shadow", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--log", type=Path, required=True, help="the service's MONITOR_DIR")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    pairs, unreadable = read_rows(args.log)
    if not pairs:
        raise SystemExit(f"{args.log}: no shadow answers recorded yet")
    results = {f"{c}/{s}": compare(rows) for (c, s), rows in sorted(pairs.items())}
    for (champion, shadow), _ in sorted(pairs.items()):
        print(describe(champion, shadow, results[f"{champion}/{shadow}"]))
    if unreadable:
        print(f"{unreadable} line(s) could not be read")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
