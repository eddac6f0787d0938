"""The accounts of a team's MLflow server (its basic-auth app), from a short config, in one command.

    MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_TRACKING_USERNAME=admin \\
    MLFLOW_TRACKING_PASSWORD=... MLFLOW_TRAINER_PASSWORD=... MLFLOW_SERVING_PASSWORD=... \\
        python -m pipeline.team_users                 # team-users.yaml, names from params.yaml

Run by the server's admin (the credentials in the environment). Each account of the config gets
its password from the environment variable the config names (never from a file in git), and its
permission on the project's experiment and registered model (from params.yaml, as the stages
name them; both are made if missing, so that they can be granted before anything is trained).
Run again after a change: passwords are reset, permissions made to match. Nothing secret is
printed.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline import config, tracking

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "team-users.yaml"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
MIN_PASSWORD_CHARS = 12


@dataclass(frozen=True)
class Account:
    """One account of the config: its name, the variable holding its password, its permission
    on the project's experiment and registered model."""

    name: str
    password_from: str
    permission: str

    def password(self, environ=os.environ) -> str:
        password = environ.get(self.password_from, "")
        if len(password) < MIN_PASSWORD_CHARS:
            raise SystemExit(
                f"{self.name}: set {self.password_from} to the account's password"
                f" (at least {MIN_PASSWORD_CHARS} characters)"
            )
        return password


def read_accounts(path: Path) -> list[Account]:
    """The accounts of a config file; SystemExit naming what is wrong."""
    described = yaml.safe_load(path.read_text()) or {}
    accounts = []
    for name, fields in (described.get("accounts") or {}).items():
        fields = fields or {}
        permission = str(fields.get("permission", "")).upper()
        if permission not in PERMISSIONS or not fields.get("password_from"):
            raise SystemExit(
                f"{path}: account {name!r} needs password_from (an environment variable) and a"
                f" permission, one of {', '.join(PERMISSIONS)}"
            )
        accounts.append(Account(name, str(fields["password_from"]), permission))
    if not accounts:
        raise SystemExit(f"{path}: no accounts (see docs/team.md)")
    return accounts


def ensure_user(auth, account: Account) -> str:
    """Create the account, or reset its password; say which."""
    from mlflow.exceptions import RestException

    try:
        auth.create_user(account.name, account.password())
        return "created"
    except RestException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    auth.update_user_password(account.name, account.password())
    return "password reset"


def grant(auth, account: Account, resource_type: str, resource_id: str) -> None:
    """Give `account` exactly its permission on one resource."""
    current = auth.get_user_permission(account.name, resource_type, resource_id)
    if current.permission == account.permission:
        return
    if current.permission not in (None, "", "NO_PERMISSIONS"):
        auth.revoke_user_permission(account.name, resource_type, resource_id)
    auth.grant_user_permission(account.name, resource_type, resource_id, account.permission)


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import RestException

    try:
        client.create_registered_model(name)
    except RestException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def set_up(accounts: list[Account], *, experiment: str, registered_model: str) -> list[str]:
    """Accounts and permissions on the server of MLFLOW_TRACKING_URI; one line per account."""
    from mlflow.server import get_app_client

    for account in accounts:
        account.password()  # every password is there before anything changes
    client = tracking.connect()
    auth = get_app_client("basic-auth", tracking_uri=client.tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, experiment)
    ensure_registered_model(client, registered_model)
    done = []
    for account in accounts:
        state = ensure_user(auth, account)
        grant(auth, account, "experiment", experiment_id)
        grant(auth, account, "registered_model", registered_model)
        done.append(
            f"{account.name} ({state}): {account.permission} on experiment {experiment!r}"
            f" and registered model {registered_model!r}"
        )
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    arguments = parser.parse_args(argv)
    params = config.load(arguments.params)
    lines = set_up(
        read_accounts(arguments.config),
        experiment=params.data.dataset,
        registered_model=params.registered_model,
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
