"""A Lightning ``CheckpointIO`` that never unpickles code.

Lightning reads ``ckpt_path`` through the strategy's ``CheckpointIO``; its default
(``TorchCheckpointIO``) passes ``weights_only=None`` on to ``torch.load``, and for ``http(s)``
paths that becomes ``weights_only=False`` (``torch.hub.load_state_dict_from_url``): a remote
checkpoint whose pickle names ``os.system`` runs it. :class:`SafeCheckpointIO` reads local,
fsspec and ``http(s)`` checkpoints with ``torch.load(weights_only=True)`` whatever the caller
asks for; remote files are downloaded to a temporary file under a size cap and a deadline
(not into the torch hub cache). Checkpoints that ``mmoe fit`` writes (weights, optimizer and
scheduler states, loops, callback states, hyper-parameters) are plain data and load; a file
whose data expand (shared references, cycles) past a cap is refused before Lightning walks it.

Use it as ``Trainer(plugins=[SafeCheckpointIO()])``.
"""

from __future__ import annotations

import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _MAP_LOCATION_TYPE, _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmoe.loading import check_bounded, torch_load_weights_only

__all__ = ["SafeCheckpointIO"]

_CHUNK = 1 << 20
#: values a whole checkpoint may expand to (weights, optimizer states, loops, callbacks...):
#: about 8 per parameter tensor, so 250k tensors; Lightning walks these structures as trees
_MAX_CHECKPOINT_VALUES = 2_000_000


def _storage(storage: Any, loc: str) -> Any:  # Lightning's default map_location: keep tensors where saved
    return storage


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``load_checkpoint`` always uses ``torch.load(weights_only=True)``.

    Args:
        max_download_bytes: largest ``http(s)`` checkpoint downloaded (bytes).
        download_timeout_s: deadline of one ``http(s)`` download (seconds; also the socket timeout).
    """

    def __init__(self, max_download_bytes: int = 16 << 30, download_timeout_s: float = 3600.0) -> None:
        super().__init__()
        if isinstance(max_download_bytes, bool) or not isinstance(max_download_bytes, int) or max_download_bytes <= 0:
            raise ValueError(f"max_download_bytes: expected an int > 0, got {max_download_bytes!r}")
        if not (isinstance(download_timeout_s, (int, float)) and download_timeout_s > 0):
            raise ValueError(f"download_timeout_s: expected a number > 0, got {download_timeout_s!r}")
        self.max_download_bytes, self.download_timeout_s = max_download_bytes, float(download_timeout_s)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: _MAP_LOCATION_TYPE = _storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """The checkpoint at ``path`` (local, fsspec or ``http(s)``); ``weights_only`` is ignored:
        always True. Unreadable files and objects ``weights_only`` refuses raise ``ValueError``."""
        source = str(path)
        if urllib.parse.urlsplit(source).scheme.lower() in ("http", "https"):
            with self._download(source) as f:
                ckpt = torch_load_weights_only(f, source, map_location)
        else:
            fs = get_filesystem(path)
            if not fs.exists(path):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            with fs.open(path, "rb") as f:
                ckpt = torch_load_weights_only(f, source, map_location)
        if not isinstance(ckpt, dict):
            raise ValueError(f"{source}: not a Lightning checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
        # shared references survive weights_only: refuse what Lightning's tree walks would expand
        check_bounded(ckpt, source, "its contents", max_values=_MAX_CHECKPOINT_VALUES)
        return ckpt

    def _download(self, url: str) -> IO[bytes]:
        """``url`` in an anonymous temporary file (positioned at 0), within the size cap and deadline."""
        deadline = time.monotonic() + self.download_timeout_s
        out = tempfile.TemporaryFile()
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "mmoe"})
            with urllib.request.urlopen(request, timeout=self.download_timeout_s) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_download_bytes:
                    raise ValueError(f"{url}: {declared} bytes exceed max_download_bytes={self.max_download_bytes}")
                total = 0
                while chunk := response.read(_CHUNK):
                    total += len(chunk)
                    if total > self.max_download_bytes:
                        raise ValueError(f"{url}: more than max_download_bytes={self.max_download_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{url}: download exceeded download_timeout_s={self.download_timeout_s}")
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            out.close()
            if exc.code == 404:
                raise FileNotFoundError(f"Checkpoint file not found: {url} (HTTP 404)") from None
            raise OSError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            out.close()
            raise OSError(f"{url}: download failed: {exc.reason}") from None
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return out
