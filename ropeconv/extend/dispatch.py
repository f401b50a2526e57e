"""run(job): the output's lock for the whole run, then the flow for the base the job names, then (--push-to-hub)
the upload of what was published."""

from __future__ import annotations

from dataclasses import replace

from ropeconv.export.staging import target_lock
from ropeconv.extend.job import ExtendJob, ExtendResult, check_overlap, is_gguf
from ropeconv.progress import Progress


def run(job: ExtendJob, progress: Progress | None = None) -> ExtendResult:
    check_overlap(job)  # before the lock file is made beside -o, which may lie inside the base
    if job.push is not None:  # no token, or offline: refused before any work, not after it
        from ropeconv.hub.push import check_can_push

        check_can_push(f"pushing to {job.push}")
    with target_lock(job.out):  # the whole run: a second run to this -o is refused, not raced
        result = _flow(job, progress)
        if job.push is not None:
            # published: parity passed (or was not asked for) and the files are in place; a refused or failed run
            # raised above and uploads nothing. Still under the lock, so the files sent are the ones published.
            from ropeconv.hub.push import push, upload_of_result

            (progress or Progress(enabled=False)).note(f"pushing {result.out} to {job.push}")
            pushed = push(upload_of_result(result), job.push, private=job.private, published=True)
            result = replace(result, pushed=pushed)
        return result


def _flow(job: ExtendJob, progress: Progress | None) -> ExtendResult:
    # the flow for this base only: the other's imports are start-up time spent for nothing
    if is_gguf(job.base):
        from ropeconv.extend import from_gguf

        return from_gguf.run(job, progress)
    from ropeconv.extend import from_hf

    return from_hf.run(job, progress or Progress(enabled=False))
