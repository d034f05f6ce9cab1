"""A dataset that prepares every case once, reports and drops the bad ones, and keeps the good ones."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from monai.transforms import Compose, apply_transform
from torch.utils.data import Dataset

from common.data import REFUSED_KEY
from common.distributed import gather, is_main
from common.errors import causes, first_line, user_error
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


def error_message(case: Mapping[str, Any], error: BaseException) -> str:
    """One line for a case's failure: the innermost error's first line, prefixed by the case's file(s)."""
    message = first_line(user_error(error) or causes(error)[-1])  # through MONAI's "applying transform ..."
    name = _case_name(dict(case))
    return message if name in message else f"{name}: {message}"


def _source(item: Mapping[str, Any]) -> str:
    """The file a post-processed case was read from (its image's metadata), else its ``image`` entry."""
    image = item.get("image")
    name = (getattr(image, "meta", None) or {}).get("filename_or_obj", image)
    return str(name[0] if isinstance(name, (list, tuple)) else name)


def fail_case(report_path: str | Path, item: Mapping[str, Any], error: BaseException) -> str:
    """Record that a case failed after it was read: remove the outputs already written for it (their paths are in
    the ``saved_to`` metadata of its images), add it to the JSON list at ``report_path``, log it; return the line."""
    for value in item.values():
        saved = (getattr(value, "meta", None) or {}).get("saved_to")
        if saved:
            Path(saved).unlink(missing_ok=True)
    source = _source(item)
    message = error_message({"image": source}, error)
    report = Path(report_path)
    failures = json.loads(report.read_text()) if report.is_file() else []
    write_json_atomic(report, [*failures, {"image": source, "error": message}])
    logger.error("skipped %s: %s", source, message)
    return message


class GuardedCompose(Compose):
    """Inference post-processing where a case that fails (inversion, writing, ...) fails alone: its written outputs
    are removed, it is listed in ``report_path`` and the item comes back with ``failed_key`` holding the message,
    so handlers skip it and the run goes on with the next case.

    Args:
        transforms: the post-processing transforms, applied in order to one case (a dict).
        report_path: the run's JSON list of failed cases (``failed_cases.json``).
        failed_key: the key set on a failed case.
    """

    def __init__(self, transforms: Sequence[Callable], report_path: str, failed_key: str = "case_failed") -> None:
        super().__init__(transforms)
        self.report_path = report_path
        self.failed_key = failed_key

    def __call__(self, data: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        done = data
        try:
            for transform in self.transforms:
                done = apply_transform(transform, done, self.map_items, self.unpack_items)
        except Exception as e:  # noqa: BLE001 - one case's failure must not stop the others
            return {**data, self.failed_key: fail_case(self.report_path, done, e)}
        return done


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
        self.listed = len(data)
        self.report_path = report_path
        self.failures = [{"image": _case_name(c), "error": out} for c, (ok, out) in zip(data, results) if not ok]
        for failure in self.failures:
            logger.error("skipped %s: %s", failure["image"], failure["error"])
        if report_path is not None:
            write_json_atomic(report_path, self.failures)
        if not self.cases:
            raise ValueError(f"none of the {len(data)} cases could be read: {json.dumps(self.failures)}")

    def _try(self, case: dict[str, Any]) -> tuple[bool, Any]:
        """Prepare one case; return (True, result) or (False, error message)."""
        refused = case.get(REFUSED_KEY)
        if refused:  # refused when the folder was listed (e.g. two files that would give one output name)
            return False, refused
        try:
            prepared = self.transform({k: v for k, v in case.items() if k != REFUSED_KEY})
        except Exception as e:  # noqa: BLE001 - any failure of one case must not stop the others
            return False, error_message(case, e)
        if self.cache:
            return True, prepared
        size = _nbytes(prepared)
        with self._lock:  # screening threads share the budget
            keep = self._kept_bytes + size <= self.keep_bytes
            self._kept_bytes += size if keep else 0
        return True, prepared if keep else None

    def finish(self, merged_path: str | None = None) -> None:
        """End a folder run: print one line (cases written, cases skipped and where they are listed); raise a
        ``ValueError`` (status 1) when any case failed, here or later (``fail_case``), after the good ones.

        Under ``torchrun`` each process lists its failures in its own ``report_path``; they are gathered into
        ``merged_path`` (the run's ``failed_cases.json``), which the first process writes, and it alone speaks.
        """
        report = Path(self.report_path) if self.report_path else None
        failed = json.loads(report.read_text()) if report is not None and report.is_file() else self.failures
        parts = gather((self.listed, failed))
        listed, failed = sum(n for n, _ in parts), [f for _, part in parts for f in part]
        if merged_path is not None:
            if is_main():
                write_json_atomic(merged_path, sorted(failed, key=lambda f: f["image"]))
            gather(None)  # the merged list is written before the per-process ones go
            if report is not None and Path(merged_path) != report:
                report.unlink(missing_ok=True)
            report = Path(merged_path)
        if not is_main():
            return  # the first process reports the run, and its status is the run's (torchrun's) status
        where = f", listed in {report}" if report is not None else ""
        print(f"{listed - len(failed)} of {listed} cases written; {len(failed)} skipped{where}")
        if failed:
            raise ValueError(f"{len(failed)} of {listed} cases failed: see {report or 'the log above'}.")

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
