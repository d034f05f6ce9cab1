"""A dataset that prepares every case once, reports and drops the bad ones, and keeps the good ones."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch.utils.data import Dataset

from common.tables import write_json_atomic

logger = logging.getLogger(__name__)


def _nbytes(item: Any) -> int:
    """Bytes held by the tensors and arrays of a prepared case (a dict, list or single tensor)."""
    if isinstance(item, dict):
        return sum(_nbytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(_nbytes(v) for v in item)
    nbytes = getattr(item, "nbytes", None)  # numpy arrays
    if isinstance(nbytes, int):
        return nbytes
    if hasattr(item, "element_size") and hasattr(item, "numel"):  # torch tensors and MetaTensors
        return int(item.element_size() * item.numel())
    return 0


def _case_name(case: dict[str, Any]) -> str:
    """The image path(s) that identify a case in messages."""
    image = case.get("image", case)
    return ", ".join(map(str, image)) if isinstance(image, (list, tuple)) else str(image)


class ScreenedDataset(Dataset):
    """Run the deterministic ``transform`` on every case up front; a case that raises is logged and skipped.

    This is how inference over a folder keeps going past an unreadable or invalid file: the error is logged with
    the file name, listed in ``failures`` (and in ``report_path`` as JSON when given), and the remaining cases are
    processed. With ``cache=True`` the prepared cases are kept in memory, as ``CacheDataset`` does, so each file
    is read once. With ``cache=False`` (inference over a folder, iterated once) a prepared case is kept only until
    it is first read, and only while the kept cases hold at most ``keep_bytes`` of tensors; beyond that budget a
    case is prepared again when iterated. So a folder of any size does not fill the memory, and a usual one is
    read and resampled once, not twice (a 512x512x300 CT prepared at 2 mm holds about 25 MB).

    Args:
        data: list of case dictionaries (``{"image": path, ...}``).
        transform: deterministic preprocessing applied to each case.
        cache: keep the prepared cases in memory.
        num_workers: threads used to prepare cases (image decoding releases the GIL).
        report_path: optional JSON file listing the failed cases and their errors.
        keep_bytes: with ``cache=False``, the most bytes of prepared tensors kept between screening and iteration.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        transform: Callable[[dict[str, Any]], Any],
        cache: bool = True,
        num_workers: int = 1,
        report_path: str | None = None,
        keep_bytes: int = 2**30,
    ) -> None:
        self.transform = transform
        self.cache = cache
        self.keep_bytes = keep_bytes
        self._kept_bytes = 0
        self._lock = threading.Lock()
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            results = list(pool.map(self._try, data))
        self.cases = [case for case, (ok, _) in zip(data, results) if ok]
        self.prepared = [out for ok, out in results if ok] if cache else None
        #: cache=False: the prepared cases kept until first read, by index into ``cases``
        self._kept = {} if cache else {i: out for i, out in enumerate(o for ok, o in results if ok) if out is not None}
        self.failures = [{"image": _case_name(c), "error": out} for c, (ok, out) in zip(data, results) if not ok]
        for failure in self.failures:
            logger.error("skipped %s: %s", failure["image"], failure["error"])
        if report_path is not None:
            write_json_atomic(report_path, self.failures)
        if not self.cases:
            raise RuntimeError(f"none of the {len(data)} cases could be read: {json.dumps(self.failures)}")

    def _try(self, case: dict[str, Any]) -> tuple[bool, Any]:
        """Prepare one case; return (True, result) or (False, error message)."""
        try:
            prepared = self.transform(dict(case))
        except Exception as e:  # noqa: BLE001 - any failure of one case must not stop the others
            cause: BaseException = e
            while cause.__cause__ is not None:  # MONAI wraps a transform's error in "applying transform ..."
                cause = cause.__cause__
            lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
            message = lines[0] if lines else type(cause).__name__
            if _case_name(case) not in message:
                message = f"{_case_name(case)}: {message}"
            return False, message
        if self.cache:
            return True, prepared
        size = _nbytes(prepared)
        with self._lock:  # screening threads share the budget
            keep = self._kept_bytes + size <= self.keep_bytes
            self._kept_bytes += size if keep else 0
        return True, prepared if keep else None

    def __getstate__(self) -> dict[str, Any]:  # loader workers started by "spawn" pickle the dataset
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Any:
        if self.prepared is not None:
            return self.prepared[index]
        kept = self._kept.pop(index, None)
        if kept is not None:
            return kept
        return self.transform(dict(self.cases[index]))
