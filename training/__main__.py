"""``python -m megaset.training``: train under ``torchrun``, one process per rank.

    torchrun --nproc-per-node 2 -m megaset.training --config config.yaml [--resume]

Each process reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
(``env://``) through :func:`megaset.training.trainer.train`; rank 0 prints the progress of
every epoch and the summary as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def main(argv: list[str] | None = None) -> None:
    """Entry point under ``torchrun``: train on this rank, rank 0 prints the JSON summary."""
    from megaset.config import load_config
    from megaset.training.trainer import train

    parser = argparse.ArgumentParser(prog="python -m megaset.training", description=main.__doc__)
    parser.add_argument("--config", default=None, help="YAML configuration (default: the demo's)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    rank = int(os.environ.get("RANK", "0"))

    def show(entry: dict[str, Any]) -> None:
        print(json.dumps({"progress": entry}), flush=True)

    summary = train(cfg, resume=args.resume, progress=show)
    if rank == 0:
        print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
