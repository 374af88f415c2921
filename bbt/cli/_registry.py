"""``bbt registry``: the operator's side of shared prompts (protocol 1.4).

``bbt registry publish RUN_DIR --registry PATH`` stores a run's selected prompt (a
``bbt pretrain`` run, or any finished ``bbt tune`` run) in the server's prompt registry as
*shared*: every API key of a ``bbt serve`` on that file lists it, reads it and starts from
it (``bbt tune --init prompt:ID``); no key can change or delete it. ``list`` shows what is
shared, ``remove`` takes a prompt back. The file may be in use by a running server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bbt.cli._common import fail
from bbt.errors import BBTError

if TYPE_CHECKING:
    from bbt.server.registry import PromptRecord, PromptRegistry

registry_app = typer.Typer(
    name="registry",
    help="Share pre-trained prompts with every key of a server (its prompt registry).",
    no_args_is_help=True,
)

REGISTRY_HELP = (
    "The server's registry file, as `bbt serve --registry` names it (default: "
    "$BBT_HOME/registry.sqlite3, else ~/.local/share/bbt/registry.sqlite3)."
)


def _open(option: str | None) -> PromptRegistry:
    from bbt.server.registry import default_path, open_registry

    if option is not None and option.strip().lower() in ("none", "memory"):
        fail("--registry must name the server's registry file (not 'none' or 'memory')")
    try:
        store = open_registry(option, default=default_path())
    except BBTError as exc:
        fail(str(exc))
    assert store is not None  # a path always opens a store
    return store


def _row(record: PromptRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "model": record.model,
        "shape": list(record.shape),
        "sha256": record.sha256,
        "label": record.label,
        **dict(record.recipe),
    }


def publish_run(run_dir: Path, registry: str | None, label: str | None) -> dict[str, Any]:
    """Publish the run in ``run_dir`` as shared in ``registry``; what to print."""
    from bbt.server.registry import RegistryError
    from bbt.server.shared_prompts import publish
    from bbt.tuner.transfer import publication

    try:
        prompt, model, metadata = publication(str(run_dir))
    except BBTError as exc:
        fail(str(exc))
    store = _open(registry)
    try:
        record, created = publish(store, prompt, model=model, metadata=metadata, label=label)
    except (RegistryError, ValueError) as exc:
        fail(f"cannot publish {run_dir}: {exc}")
    finally:
        store.close()
    return {**_row(record), "new": created, "registry": store.path}


def publish_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run (bbt pretrain or bbt tune)."),
    registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
    label: str | None = typer.Option(None, "--label", help="A name shown to every key."),
) -> None:
    """Share a run's prompt with every key of the server (read-only to them)."""
    typer.echo(json.dumps(publish_run(run_dir, registry, label)))


def list_cmd(
    registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
) -> None:
    """The shared prompts, oldest first, one JSON object a line."""
    from bbt.server.registry import RegistryError
    from bbt.server.shared_prompts import SHARED_TENANT

    store = _open(registry)
    try:
        records = store.records(SHARED_TENANT)
    except RegistryError as exc:
        fail(str(exc))
    finally:
        store.close()
    for record in records:
        typer.echo(json.dumps(_row(record)))


def remove_cmd(
    prompt_id: str = typer.Argument(..., help="The shared prompt's id (bp_...)."),
    registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
) -> None:
    """Stop sharing a prompt (runs that started from it keep their copy of p0)."""
    from bbt.server.registry import RegistryError
    from bbt.server.shared_prompts import SHARED_TENANT

    store = _open(registry)
    try:
        removed = store.delete(SHARED_TENANT, prompt_id)
    except RegistryError as exc:
        fail(str(exc))
    finally:
        store.close()
    if not removed:
        fail(f"no shared prompt {prompt_id} in {store.path}")
    typer.echo(json.dumps({"id": prompt_id, "removed": True}))


registry_app.command("publish")(publish_cmd)
registry_app.command("list")(list_cmd)
registry_app.command("remove")(remove_cmd)


def register(app: typer.Typer) -> None:
    """Add ``bbt registry`` to ``app``."""
    app.add_typer(registry_app)
