"""The checkpointing config: its schema, its resolution into policies, its encodings.

`schema` validates what users write (pydantic); `resolve` is the one function where
config fields become ranking and retention objects; `serialize` encodes what ckpt
writes as JSON and YAML (training info, run config, pins, the ranking record).
"""
