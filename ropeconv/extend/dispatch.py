"""run(job): the output's lock for the whole run, then the flow for the base the job names."""

from __future__ import annotations

from ropeconv.export.staging import target_lock
from ropeconv.extend.job import ExtendJob, ExtendResult, check_overlap, is_gguf
from ropeconv.progress import Progress


def run(job: ExtendJob, progress: Progress | None = None) -> ExtendResult:
    check_overlap(job)  # before the lock file is made beside -o, which may lie inside the base
    with target_lock(job.out):  # the whole run: a second run to this -o is refused, not raced
        # the flow for this base only: the other's imports are start-up time spent for nothing
        if is_gguf(job.base):
            from ropeconv.extend import from_gguf

            return from_gguf.run(job, progress)
        from ropeconv.extend import from_hf

        return from_hf.run(job, progress or Progress(enabled=False))
