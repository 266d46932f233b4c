"""The durable job queue: a SQLite store of jobs (:mod:`~webui.queue.store`), the request codec that lets a
job outlive the process (:mod:`~webui.queue.codec`), workers that run jobs (:mod:`~webui.queue.workers`),
write-once image files (:mod:`~webui.queue.outputs`) and finished-job callbacks (:mod:`~webui.queue.callbacks`).
The queue itself, :class:`webui.jobs.JobQueue`, ties them together."""
