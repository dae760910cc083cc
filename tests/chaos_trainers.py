"""The trainer jobs as ckpt-chaos targets: a Lightning run and a Hugging Face run.

Each resumes from ckpt's latest committed checkpoint, prints ``resumed from step N``
(0 on a fresh start) and writes its final weights to ``OUT/final.json``, which must be
the same whatever crash came before. Run::

    ckpt-chaos run --step-regex "resumed from step (\\d+)" --result-file "{out}/final.json" \\
        -- python tests/chaos_trainers.py lightning {out}

(or ``hf``). It is not part of the test suite: the suite's own kill tests of the
trainers are in ``tests/test_lightning.py`` and ``tests/test_hf.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(target: str, out: str) -> None:
    directory = Path(out) / "checkpoints"
    if target == "lightning":
        import lightning_job

        report = lightning_job.fit(directory, 5, ckpt_path="last")
        started = report["ckpt_path"]
    else:
        import hf_job

        report = hf_job.train(directory, 10, resume="latest")
        started = report["resumed_from"]
    step = 0 if started is None else int(Path(started).parent.name.split("_")[1])
    print(f"resumed from step {step}", flush=True)
    (Path(out) / "final.json").write_text(json.dumps(report["weight"]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
