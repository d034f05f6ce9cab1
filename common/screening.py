"""A dataset that prepares every case once, reports and drops the bad ones, and keeps the good ones."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch.utils.data import Dataset

from common.tables import write_json_atomic

logger = logging.getLogger(__name__)


def _case_name(case: dict[str, Any]) -> str:
    """The image path(s) that identify a case in messages."""
    image = case.get("image", case)
    return ", ".join(map(str, image)) if isinstance(image, (list, tuple)) else str(image)


class ScreenedDataset(Dataset):
    """Run the deterministic ``transform`` on every case up front; a case that raises is logged and skipped.

    This is how inference over a folder keeps going past an unreadable or invalid file: the error is logged with
    the file name, listed in ``failures`` (and in ``report_path`` as JSON when given), and the remaining cases are
    processed. With ``cache=True`` the prepared cases are kept in memory, as ``CacheDataset`` does, so each file
    is read once; with ``cache=False`` only the check is kept and cases are prepared again when iterated.

    Args:
        data: list of case dictionaries (``{"image": path, ...}``).
        transform: deterministic preprocessing applied to each case.
        cache: keep the prepared cases in memory.
        num_workers: threads used to prepare cases (image decoding releases the GIL).
        report_path: optional JSON file listing the failed cases and their errors.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        transform: Callable[[dict[str, Any]], Any],
        cache: bool = True,
        num_workers: int = 1,
        report_path: str | None = None,
    ) -> None:
        self.transform = transform
        self.cache = cache
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            results = list(pool.map(self._try, data))
        self.cases = [case for case, (ok, _) in zip(data, results) if ok]
        self.prepared = [out for ok, out in results if ok] if cache else None
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
        return True, prepared if self.cache else None

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Any:
        if self.prepared is not None:
            return self.prepared[index]
        return self.transform(dict(self.cases[index]))
