"""Hugging Face Hub downloads through `huggingface_hub` (its cache, its
environment: HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN)."""

from typing import Optional


class PretrainedNotAvailableError(FileNotFoundError):
  """The weights are neither cached nor downloadable; says how to get them."""


class NoSuchFileError(PretrainedNotAvailableError):
  """The repository exists (or is cached) but lacks the file."""


def _fetch_hint(repo_id: str, filenames, revision: Optional[str]) -> str:
  rev = f' --revision {revision}' if revision else ''
  return (
      f'Fetch it where there is network: `hf download {repo_id} '
      f'{" ".join(filenames)}{rev}` (the same HF_HOME/HF_HUB_CACHE, or copy '
      'that cache here), or download the files and pass the local '
      "directory or .safetensors file with model_name='<architecture>'."
  )


def download(
    repo_id: str,
    filename: str,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    also: tuple[str, ...] = (),
) -> str:
  """Local path of `filename` in `repo_id` (cached, or downloaded now).

  `also` only names the other files of the same load in the error's fetch
  command. Raises `PretrainedNotAvailableError` (offline and not cached,
  no network, no such repository/revision/file) naming all of them.
  """
  try:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors
  except ImportError as e:
    raise ImportError(
        f'Loading {repo_id} from the Hugging Face Hub needs huggingface_hub '
        '(pip install huggingface_hub)'
    ) from e
  try:
    return huggingface_hub.hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        library_name='se_flax',
    )
  except errors.RepositoryNotFoundError:
    reason = 'the repository does not exist (or is private: set HF_TOKEN)'
    error = PretrainedNotAvailableError
  except errors.RevisionNotFoundError:
    reason = f'the repository has no revision {revision!r}'
    error = PretrainedNotAvailableError
  except errors.RemoteEntryNotFoundError:
    reason = 'the repository has no such file'
    error = NoSuchFileError
  except errors.LocalEntryNotFoundError as e:
    error = NoSuchFileError
    offline = constants.HF_HUB_OFFLINE
    reason = (
        'it is not in the local cache '
        f'({cache_dir or constants.HF_HUB_CACHE}) and '
        + (
            'HF_HUB_OFFLINE is set'
            if offline
            else f'it could not be downloaded ({str(e).splitlines()[0]})'
        )
    )
  raise error(
      f'Cannot get {filename!r} of the Hugging Face Hub repository '
      f'{repo_id!r}'
      + (f' at revision {revision!r}' if revision else '')
      + f': {reason}. '
      + _fetch_hint(repo_id, (filename, *also), revision)
  ) from None
