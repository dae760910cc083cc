"""One checkpoint directory, bound once: its index, registry entry, attempts, retention.

`ckpt._directory.directory.Directory` is what a manager changes and asks; the modules
beside it are its parts: the index of what is committed (`index`, `records`), the
directory's metadata files (`meta`), the writer registry shared by the managers of one
process (`registry`), and the retention applier with its incremental tracker
(`retention`, `incremental`).
"""
