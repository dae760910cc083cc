"""How the processes of a job agree: a coordinator, its messages, the writers' reports.

`coordinator` gives one code path for one process and many (`Local` just calls,
`Collective` runs rounds over `group`'s bounded messages); `reports` holds the files a
worker of a single-controller job reports with `ckpt.mark_written`.
"""
