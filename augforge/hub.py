"""Hugging Face Hub references (``hf://ORG/NAME[@REVISION]``) and the optional ``augforge[hub]`` libraries.

Every option that takes a model folder also takes a Hub reference; ``prepare`` takes one of a dataset
(``hf://ORG/NAME`` or ``hf://datasets/ORG/NAME``). A reference is resolved with
``huggingface_hub.snapshot_download``: files already in the cache are used as they are, ``HF_HOME`` /
``HF_HUB_CACHE`` say where the cache is and ``HF_HUB_OFFLINE=1`` keeps to it. Before a command runs,
:func:`pin_config` rewrites each reference to the commit it resolves to (``hf://ORG/NAME@<40 hex>``),
so the run identity a command records names that commit: a branch that moved is a different run.

A stage opens a path with ``pathlib.Path``, which folds ``hf://`` into ``hf:/``; :func:`is_reference`
and :func:`parse` take both spellings. Importing this module imports neither torch nor the Hub
libraries (:func:`require` imports them when a command needs them, or says how to install them).
"""

from __future__ import annotations

import os
import re
from dataclasses import fields, replace
from importlib import import_module
from pathlib import Path

from augforge.errors import AugforgeError

PREFIX = "hf://"
EXTRA = "pip install 'augforge[hub]'"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_NAME = re.compile(r"[\w.-]+/[\w.-]+")
_resolved: dict[tuple, tuple[Path, str]] = {}  # (repo type, repo, commit, cache) -> (snapshot, commit)


def require(module: str, what: str = "this command"):
    """Import one of the optional Hub libraries (huggingface_hub, datasets), or one clear line."""
    try:
        return import_module(module)
    except ImportError:
        raise AugforgeError(f"{what} needs the optional package {module.split('.')[0]!r}: {EXTRA}") from None


def is_reference(value) -> bool:
    """Whether a path or option value is a Hub reference (``hf://...``, or ``hf:/...`` once it went
    through ``pathlib.Path``)."""
    return str(value).startswith("hf:/")


def parse(value, repo_type: str = "model") -> tuple[str, str, str | None]:
    """``hf://[datasets/]ORG/NAME[@REVISION]`` -> (repo type, repo id, revision or None)."""
    text = str(value)
    rest = text[len("hf:/"):].lstrip("/")
    if rest.startswith(("datasets/", "models/")):
        kind, rest = rest.split("/", 1)
        repo_type = kind[:-1]
    repo, _, revision = rest.partition("@")
    if not _NAME.fullmatch(repo) or (_ and not revision):
        raise AugforgeError(f"{text}: a Hub reference is hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return repo_type, repo, revision or None


def reference(repo_type: str, repo: str, revision: str | None = None) -> str:
    """The canonical spelling of a reference (datasets say so; models do not)."""
    return f"{PREFIX}{'datasets/' if repo_type == 'dataset' else ''}{repo}" + (f"@{revision}" if revision else "")


def cache_dir() -> str:
    """The hub cache as the environment says now (HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return require("huggingface_hub.constants", "a hf:// reference").HF_HUB_CACHE


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in ("1", "ON", "YES", "TRUE")


def resolve(value, repo_type: str = "model") -> tuple[Path, str]:
    """A Hub reference -> (local snapshot folder, commit hash), cache first; one line when it cannot be had."""
    repo_type, repo, revision = parse(value, repo_type)
    # a commit is immutable: resolved once per process; a branch or tag is looked up every time (it may move)
    key = (repo_type, repo, revision, cache_dir())
    if revision and _COMMIT.fullmatch(revision) and key in _resolved:
        return _resolved[key]
    hub = require("huggingface_hub", "a hf:// reference")
    where = reference(repo_type, repo, revision)
    try:
        folder = hub.snapshot_download(repo, repo_type=repo_type, revision=revision, cache_dir=cache_dir(),
                                       local_files_only=offline())
    except Exception as e:  # not cached while offline, no such repo/revision, no route, incomplete snapshot
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        state = "HF_HUB_OFFLINE=1 and it is not" if offline() else "it could not be downloaded nor found"
        raise AugforgeError(f"{where}: {state} in the Hugging Face cache {cache_dir()} ({type(e).__name__}: "
                            f"{reason})") from None
    folder = Path(folder)
    commit = folder.name if _COMMIT.fullmatch(folder.name) else (revision or "")
    _resolved[key] = (folder, commit)
    return folder, commit


def pin(value, repo_type: str = "model") -> str:
    """A reference rewritten to the commit it resolves to (anything else unchanged)."""
    if not is_reference(value):
        return value
    kind, repo, _ = parse(value, repo_type)
    _, commit = resolve(value, repo_type)
    return reference(kind, repo, commit)


def local(value, repo_type: str = "model") -> Path:
    """The local folder of a path or a reference."""
    return resolve(value, repo_type)[0] if is_reference(value) else Path(value)


def shown(value) -> str:
    """How a run records a model path: a reference as written (pinned), a folder as its absolute path."""
    return reference(*parse(value)) if is_reference(value) else str(Path(value).resolve())


def pin_config(cfg):
    """``cfg`` with every Hub reference in the options that take one (``option(hub="model")``) pinned to its
    commit; a comma list (``evaluate --segmenter A,B``) item by item."""
    changes = {}
    for f in fields(cfg):
        repo_type = f.metadata.get("hub")
        value = getattr(cfg, f.name)
        if not repo_type or not isinstance(value, str) or "hf:/" not in value:
            continue
        changes[f.name] = ",".join(pin(item.strip(), repo_type) for item in value.split(","))
    return replace(cfg, **changes) if changes else cfg
