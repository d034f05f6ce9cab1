"""Ignite handlers MONAI lacks: a per-case table (metrics or clinical measurements) written at the end of a run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from common.distributed import gather, is_main
from common.screening import fail_case
from common.tables import case_stem, summarize, write_csv_atomic, write_json_atomic

logger = logging.getLogger(__name__)

#: attribute of ``engine.state`` where each ``CaseTableWriter`` leaves its gathered rows, by table name
TABLES_ATTRIBUTE = "case_tables"


def source_of(item: dict[str, Any], key: str = "image") -> str:
    """The file an output item was read from."""
    value = item.get(key)
    meta = getattr(value, "meta", None) or item.get(f"{key}_meta_dict") or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


def case_items(engine: Engine, failed_key: str = "case_failed") -> list[dict[str, Any]]:
    """The cases of an engine's last iteration, each its batch and output items merged (post-processing leaves
    unchanged inputs, e.g. a mask, in the batch), without those that failed in post-processing."""
    outputs, batches = engine.state.output, engine.state.batch
    outputs = outputs if isinstance(outputs, list) else [outputs]
    batches = batches if isinstance(batches, list) and len(batches) == len(outputs) else [{}] * len(outputs)
    items = [{**batch_item, **output_item} for batch_item, output_item in zip(batches, outputs)]
    return [item for item in items if not item.get(failed_key)]


def published_rows(engine: Engine, name: str) -> list[dict[str, Any]]:
    """The rows of every process that the ``CaseTableWriter`` named ``name`` gathered at the end of the run (for a
    handler attached after it, such as the review page)."""
    tables = getattr(engine.state, TABLES_ATTRIBUTE, None) or {}
    if name not in tables:
        raise RuntimeError(f"no table {name!r} at the end of the run: attach this handler after the CaseTableWriter "
                           f"named {name!r} (tables: {sorted(tables)})")  # fmt: skip
    return tables[name]


class CaseTableWriter:
    """Compute one row per case from an engine's post-processed output, and write them as CSV and JSON.

    On every iteration ``row_fn(item)`` is called for each decollated case (its batch and output items merged); at
    the end of the run the rows go to ``output_dir/<name>.csv`` and the mean/std/median of every numeric column to
    ``output_dir/<name>_summary.json``. With ``per_case_json=True`` each row is also written, as it is computed,
    to ``output_dir/<case>_<name>.json``. The summary means are put in ``engine.state.metrics`` as
    ``<name>/<column>`` so ``StatsHandler`` and TensorBoard show them. Under ``torchrun`` every process collects
    its own cases and the first writes the tables of all of them, in file order. Every process leaves the gathered
    rows in ``engine.state.case_tables[name]`` for the handlers after it (``published_rows``).

    Args:
        row_fn: maps one post-processed item (a dict of tensors) to a dict of values.
        output_dir: folder of the files.
        name: base name of the files (e.g. ``metrics`` or ``measurements``).
        per_case_json: also write one JSON file per case.
        source_key: key whose metadata names the case's file.
        derived: further tables made from all rows at the end of the run, ``{name: fn(rows) -> rows}``, each
            written as ``<name>.csv`` and ``<name>_summary.json`` (e.g. per-subject indices from per-case rows).
        report_path: with it (inference over a folder), a case whose ``row_fn`` fails fails alone: its outputs are
            removed and it is listed there (``common.screening.fail_case``); without it, the error stops the run.
        failed_key: key of a case that already failed in post-processing (``GuardedCompose``): it gets no row.
        sections: further sections of ``<name>_summary.json`` made from all rows at the end of the run,
            ``{section: fn(rows) -> dict}`` (e.g. ``review``: how well the review flags find the bad cases); their
            numeric values are put in ``engine.state.metrics`` as ``<name>/<section>/<key>``.
    """

    def __init__(
        self,
        row_fn: Callable[[dict[str, Any]], dict[str, Any]],
        output_dir: str,
        name: str = "metrics",
        per_case_json: bool = False,
        source_key: str = "image",
        derived: Mapping[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] | None = None,
        report_path: str | None = None,
        failed_key: str = "case_failed",
        sections: Mapping[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] | None = None,
    ) -> None:
        self.row_fn = row_fn
        self.output_dir = Path(output_dir)
        self.name = name
        self.per_case_json = per_case_json
        self.source_key = source_key
        self.derived = dict(derived or {})
        self.report_path = report_path
        self.failed_key = failed_key
        self.sections = dict(sections or {})
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine``."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        for item in case_items(engine, self.failed_key):
            source = source_of(item, self.source_key)
            try:
                row = {"case": case_stem(source), "file": source, **self.row_fn(item)}
            except Exception as e:
                if self.report_path is None:
                    raise
                fail_case(self.report_path, item, e)
                continue
            self.rows.append(row)
            if self.per_case_json:
                write_json_atomic(self.output_dir / f"{row['case']}_{self.name}.json", row)

    def _write(self, engine: Engine) -> None:
        rows = [row for part in gather(self.rows) for row in part]  # every process's cases under torchrun
        if len(rows) != len(self.rows):
            self.rows = sorted(rows, key=lambda row: str(row["file"]))
        if getattr(engine.state, TABLES_ATTRIBUTE, None) is None:
            setattr(engine.state, TABLES_ATTRIBUTE, {})
        getattr(engine.state, TABLES_ATTRIBUTE)[self.name] = self.rows  # for handlers after this one (the report)
        if not self.rows or not is_main():
            return
        tables = {self.name: self.rows, **{name: fn(self.rows) for name, fn in self.derived.items()}}
        sections = {section: dict(fn(self.rows)) for section, fn in self.sections.items()}
        for name, rows in tables.items():
            summary = summarize(rows)
            extra = sections if name == self.name else {}
            write_csv_atomic(self.output_dir / f"{name}.csv", rows)
            write_json_atomic(self.output_dir / f"{name}_summary.json", {"cases": len(rows), **summary, **extra})
            for column, stats in summary.items():
                engine.state.metrics[f"{name}/{column}"] = stats["mean"]
            for section, values in extra.items():
                numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                engine.state.metrics.update({f"{name}/{section}/{key}": value for key, value in numbers.items()})
                logger.info("%s %s: %s", name, section, ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
            logger.info("wrote %d rows to %s", len(rows), self.output_dir / f"{name}.csv")


class BestModelState:
    """The best validation metric and its epoch, kept in the training checkpoint (an entry of the trainer's
    ``CheckpointSaver`` ``save_dict`` and ``CheckpointLoader`` ``load_dict``), so that a resumed run knows its best
    model: the evaluator's ``best_metric`` is restored and the best-model saver overwrites ``best_filename`` only
    with a better one.

    Args:
        evaluator: the validation engine (its ``state.best_metric`` and ``state.best_metric_epoch``).
        handlers: the evaluator's handlers; the ``CheckpointSaver`` among them that saves on the key metric is told
            which score its file holds.
        best_filename: the best model's file name in that saver's folder (``key_metric_filename``).
    """

    def __init__(self, evaluator: Engine, handlers: list[Any] | None, best_filename: str) -> None:
        self.evaluator = evaluator
        self.handlers = list(handlers or [])
        self.best_filename = best_filename

    def state_dict(self) -> dict[str, float | int]:
        """The best metric and its epoch, as a checkpoint stores them."""
        return {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best metric and its epoch, and the best-model saver's record of the score it saved."""
        best, epoch = float(state["best_metric"]), int(state["best_metric_epoch"])
        self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = best, epoch
        if epoch < 0:
            return  # no validation ran before the checkpoint: nothing saved yet
        for saver in (h for h in self.handlers if isinstance(h, CheckpointSaver)):
            saver.load_state_dict({"_saved": [(best, self.best_filename)]})
        logger.info(f"resumed: the best model {self.best_filename} has validation metric {best:.4f} (epoch {epoch})")


class PruneCheckpoints:
    """Keep only the ``keep`` newest epoch checkpoints (``checkpoint_epoch=<n>.pt``) in ``ckpt_dir`` at the end of
    every epoch. ``CheckpointSaver`` prunes its own files, but not those of an earlier run that this one resumed,
    so without this a folder that is resumed again and again fills up; the best and the final model are not
    touched.

    Args:
        ckpt_dir: the folder of the trainer's checkpoints.
        keep: how many of the newest epoch checkpoints to keep.
    """

    def __init__(self, ckpt_dir: str, keep: int = 2) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.keep = keep

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        epochs = []
        for path in self.ckpt_dir.glob("checkpoint_epoch=*.pt"):
            number = path.stem.split("=", 1)[1]
            if number.isdigit():
                epochs.append((int(number), path))
        for _, path in sorted(epochs)[: max(len(epochs) - self.keep, 0)]:
            path.unlink(missing_ok=True)  # another process of a torchrun may have removed it first
