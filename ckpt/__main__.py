"""``python -m ckpt``: the ``ckpt`` command line."""

from ckpt._cli import main

raise SystemExit(main())
