"""Put the previous champion back, in one command, and read the alias's history.

    python -m pipeline.champion.rollback --reason "v7 misreads sandals"
    python -m pipeline.champion.rollback --reason "..." --to 5
    python -m pipeline.champion.rollback --history

`champion` moves back to the version that held it before the current one (by the `champion_since`
tag every move records; a version rolled back once is never returned to). The version left gets the
tag `rolled_back` (when, by whom, why), the one restored `champion_since` and `champion_reason`.
`--to` names the version to restore instead: for a registry whose earlier champions were crowned
before the history was recorded. A service that follows the registry (`make serve`) serves it
within its poll interval. The registered model comes from REGISTERED_MODEL, else params.yaml (as
the follower and `serving.tools.package` read it); the store from MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import argparse
import getpass
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.champion import registry


class RollbackError(RuntimeError):
    """There is nothing to roll back to."""


def previous(client: Any, name: str) -> tuple[Any, Any]:
    """(the champion, the version that held the alias before it and was not rolled back)."""
    current = registry.champion(client, name)
    if current is None:
        raise RollbackError(f"{name} has no champion to roll back")
    history = [
        version
        for version in registry.champion_history(client, name)
        if str(version.version) != str(current.version)
        and registry.ROLLED_BACK not in version.tags
        and version.tags[registry.CHAMPION_SINCE]
        < current.tags.get(registry.CHAMPION_SINCE, "9999")
    ]
    if not history:
        raise RollbackError(
            f"no version held {name}'s champion alias before v{current.version} (or every one"
            " was rolled back), as far as the history recorded; nothing to go back to. Name the"
            " version to restore with --to"
        )
    return current, history[-1]


def rollback(
    client: Any, name: str, *, reason: str, by: str, to: str | None = None
) -> tuple[str, str]:
    """Move `champion` back (to version `to`, when given); (the version left, the one restored)."""
    if to is None:
        current, restored = previous(client, name)
    else:
        current, restored = registry.champion(client, name), client.get_model_version(name, to)
        if current is None or str(current.version) == str(to):
            raise RollbackError(f"v{to} is already {name}'s champion, or there is none to leave")
    when = datetime.now(UTC).isoformat(timespec="seconds")
    note = f"{when} by {by}: {reason}"[:500]
    client.set_model_version_tag(name, current.version, registry.ROLLED_BACK, note)
    registry.make_champion(
        client, name, str(restored.version), reason=f"rollback from v{current.version}: {reason}"
    )
    return str(current.version), str(restored.version)


def history_lines(client: Any, name: str) -> list[str]:
    """One line per version that held the alias, oldest first."""
    current = registry.champion(client, name)
    lines = []
    for version in registry.champion_history(client, name):
        tags = version.tags
        mark = "*" if current is not None and version.version == current.version else " "
        left = (
            f"  [rolled back {tags[registry.ROLLED_BACK]}]" if registry.ROLLED_BACK in tags else ""
        )
        lines.append(
            f"{mark} v{version.version}  since {tags[registry.CHAMPION_SINCE]}"
            f"  {tags.get(registry.CHAMPION_REASON, '')}{left}"
        )
    return lines


def who(environ=os.environ) -> str:
    """Who rolls back: the registry account when there is one (MLFLOW_TRACKING_USERNAME, the
    name the server's basic auth checked), else this machine's user."""
    return environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--reason", help="why: recorded on both versions")
    action.add_argument("--history", action="store_true", help="print the alias's history")
    parser.add_argument("--to", help="the version to restore (default: the one before)")
    args = parser.parse_args(argv)
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline import config, tracking

    # REGISTERED_MODEL first, as serving.tools.package and the follower read it.
    name = os.environ.get("REGISTERED_MODEL") or config.load(args.params).registered_model
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri())
    if args.history:
        print("\n".join(history_lines(client, name)) or f"{name}: no champion yet")
        return
    try:
        left, restored = rollback(client, name, reason=args.reason, by=who(), to=args.to)
    except (RollbackError, MlflowException) as error:
        raise SystemExit(f"rollback: {error}") from None
    print(f"{name}: champion v{left} -> v{restored} ({args.reason})")


if __name__ == "__main__":
    main()
