"""Hugging Face Hub I/O (``huggingface_hub`` does the work): fetching intervention directories, and
:func:`push_to_hub`, the one upload every publisher uses (intervention directories, adapters, a run's
publish stage)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .artifact import CONFIG_NAME, VECTORS_NAME, InterventionConfigError

ALLOW_PATTERNS = [CONFIG_NAME, VECTORS_NAME, "README.md"]


def resolve_directory(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                      cache_dir: str | None = None) -> Path:
    """A local directory as is; otherwise a Hub repo id fetched with ``snapshot_download``.

    Only the JSON config, the safetensors file and the card are downloaded (never pickles). With
    ``HF_HUB_OFFLINE=1`` a pre-populated cache is used.
    """
    return resolve(path_or_repo_id, revision=revision, cache_dir=cache_dir)[0]


def resolve(path_or_repo_id: str | os.PathLike, revision: str | None = None,
            cache_dir: str | None = None) -> tuple[Path, Path]:
    """``(directory, root)``: the directory as :func:`resolve_directory` gives it, and the folder its files
    must resolve inside: the directory itself, or for a Hub snapshot the repo's cache folder (the snapshot's
    files are symlinks into its ``blobs/``)."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path, path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id = str(path_or_repo_id)
    if path.exists() or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise InterventionConfigError("path", f"{repo_id!r} is neither an intervention directory nor a Hub repo id")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InterventionConfigError("repo_id", f"{repo_id!r} is not a directory nor a valid Hub repo id: {err}") \
            from None
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                          allow_patterns=ALLOW_PATTERNS))
    except Exception as err:  # offline and not cached, repo missing, auth...
        raise InterventionConfigError("repo_id", f"cannot fetch {repo_id!r} from the Hub: "
                                      f"{type(err).__name__}: {err}") from None
    # <cache>/models--owner--name/snapshots/<commit>: the snapshot's files link into <cache>/models--.../blobs
    root = snapshot.parents[1] if snapshot.parent.name == "snapshots" else snapshot
    return snapshot, root


def push_to_hub(repo_id: str, folders: Sequence[tuple[str | os.PathLike, str]] = (),
                files: Sequence[tuple[str | os.PathLike, str]] = (), *, private: bool = False,
                token: str | None = None, commit_message: str = "Upload", repo_type: str = "model",
                ignore_patterns: Sequence[str] = ("checkpoints/*",)) -> tuple[str, list[str]]:
    """Create ``repo_id`` if needed (``exist_ok``), upload each ``(folder, path in repo)`` (``""``: the repo
    root; ``ignore_patterns`` skipped), then each ``(file, path in repo)``; one commit per upload.

    Returns ``(repo URL, [commit URL per upload])``.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
    commits = []
    for folder, in_repo in folders:
        info = api.upload_folder(folder_path=str(folder), path_in_repo=in_repo or None, repo_id=repo_id,
                                 repo_type=repo_type, commit_message=commit_message,
                                 ignore_patterns=list(ignore_patterns))
        commits.append(str(getattr(info, "commit_url", info)))
    for path, in_repo in files:
        info = api.upload_file(path_or_fileobj=str(path), path_in_repo=in_repo, repo_id=repo_id,
                               repo_type=repo_type, commit_message=commit_message)
        commits.append(str(getattr(info, "commit_url", info)))
    return str(url), commits
