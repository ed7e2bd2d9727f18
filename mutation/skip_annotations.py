"""Mark as skipped the cosmic-ray mutants that lie inside a type annotation.

Every module of klime_mp has ``from __future__ import annotations``: an annotation is never
evaluated, so ``list[bytes] | None`` made ``list[bytes] * None`` changes nothing, and each
such mutant would survive a whole test run. ``cr-filter-operators`` can only drop an
operator everywhere, and the spool and the importer also use ``|`` in code (open flags,
packed positions), so this skips by position instead.

    /tmp/crf/bin/python mutation/skip_annotations.py SESSION.sqlite
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

Span = tuple[tuple[int, int], tuple[int, int]]


def annotation_spans(source: str) -> list[Span]:
    spans: list[Span] = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            found += [arg.annotation for arg in every if arg is not None]
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for ann in found:
            if ann is not None and ann.end_lineno is not None and ann.end_col_offset is not None:
                spans.append(((ann.lineno, ann.col_offset), (ann.end_lineno, ann.end_col_offset)))
    return spans


def main(session: str) -> int:
    spans: dict[str, list[Span]] = {}
    skipped = 0
    with use_db(session) as db:
        for item in db.pending_work_items:
            for mutation in item.mutations:
                path = str(mutation.module_path)
                if path not in spans:
                    spans[path] = annotation_spans(Path(path).read_text("utf-8"))
                start = (mutation.start_pos[0], mutation.start_pos[1])
                if any(low <= start < high for low, high in spans[path]):
                    result = WorkResult(
                        output="In an annotation (never evaluated)",
                        worker_outcome=WorkerOutcome.SKIPPED,
                    )
                    db.set_result(item.job_id, result)
                    skipped += 1
                    break
    print(f"skipped {skipped} mutants inside annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
