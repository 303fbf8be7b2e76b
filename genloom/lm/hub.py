"""Model folders from the Hugging Face Hub: `ORG/NAME[@REVISION]` downloaded with `huggingface_hub`.

Only what genloom reads is fetched: safetensors weights (and their shard index), the JSON files (config,
tokenizer, generation config) and the tokenizer / chat-template files; never a pickle (`*.bin`, `*.pt`,
`*.pth`, `*.pkl`, `*.ckpt`). Files land in huggingface_hub's own cache (`HF_HOME` / `HF_HUB_CACHE`), so a
second import reads them from there; `HF_HUB_OFFLINE=1` uses only that cache; the token comes from where
huggingface_hub looks (`HF_TOKEN`, `hf auth login`); `HF_ENDPOINT` points it at another server.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import CheckpointError

__all__ = ["is_hub_id", "split_hub_id", "download_model", "ALLOW_PATTERNS"]

ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer.model", "*.jinja", "*.txt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_ID = re.compile(rf"({_NAME})/({_NAME})(?:@([A-Za-z0-9._/-]{{1,200}}))?")


def is_hub_id(text: str) -> bool:
    """Whether `text` reads as a Hub repository ORG/NAME[@REVISION] (a local folder is checked first)."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


def split_hub_id(text: str) -> tuple[str, str | None]:
    match = _HUB_ID.fullmatch(text)
    if match is None or ".." in text:
        raise CheckpointError(f"{text!r} is not a Hub repository name ORG/NAME or ORG/NAME@REVISION")
    return f"{match[1]}/{match[2]}", match[3]


def download_model(text: str) -> Path:
    """The local folder of the Hub repository `text` (ORG/NAME[@REVISION]), downloaded into huggingface_hub's
    cache where it is not there yet. Every failure is one CheckpointError line."""
    repo, revision = split_hub_id(text)
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise CheckpointError(f"downloading {repo} needs huggingface_hub: pip install 'huggingface_hub>=0.24' "
                              "(or download the folder yourself and pass it to --hf)") from None
    where = f"{repo}@{revision}" if revision else repo
    try:
        folder = Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"the Hub repository {repo} has no revision {revision!r} (a branch, tag or commit)"
                              ) from None
    except errors.GatedRepoError:
        raise CheckpointError(f"{repo} is gated on the Hub: accept its licence on its page, then log in (hf auth "
                              "login) or set HF_TOKEN") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"the Hub has no model repository {repo} (or it is private: log in with hf auth "
                              "login or set HF_TOKEN)") from None
    except errors.LocalEntryNotFoundError:
        raise CheckpointError(f"{where} is not in the Hugging Face cache and the Hub cannot be reached (no "
                              "network, or HF_HUB_OFFLINE=1); connect once to download it, or pass a local folder to "
                              "--hf") from None
    except errors.HfHubHTTPError as error:
        raise CheckpointError(f"downloading {where} failed: {str(error).splitlines()[0]}") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"downloading {where} failed: {type(error).__name__}: {error}") from None
    if not any(folder.glob("*.safetensors")):
        pickled = _pickled_files(huggingface_hub, repo, revision)
        if pickled:
            raise CheckpointError(f"{where} has only pickled weights ({pickled[0]}), which genloom never loads "
                                  "(nothing was unpickled); use a repository with safetensors weights, or convert "
                                  "them with transformers: model.save_pretrained(dir, safe_serialization=True)")
        raise CheckpointError(f"{where} has no safetensors weights (model.safetensors or shards)")
    return folder


def _pickled_files(huggingface_hub, repo: str, revision: str | None) -> list[str]:
    """The pickled weight files the repository lists (its file names only; nothing is downloaded)."""
    try:
        files = huggingface_hub.list_repo_files(repo, revision=revision)
    except Exception:        # noqa: BLE001 - offline or refused: the answer is only for a better message
        return []
    return sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
