"""Where things live in a run directory (the output of `bcd train`, the input of
`bcd evaluate` and `bcd export`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def model(self) -> Path:            # best checkpoint by validation AUC
        return self.root / "model.keras"

    @property
    def run_info(self) -> Path:         # config, preprocessing, labels, threshold, data summary
        return self.root / "run.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def metrics_md(self) -> Path:
        return self.root / "metrics.md"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def last_model(self) -> Path:       # every epoch, with optimizer state, for --resume
        return self.checkpoint_dir / "last.keras"

    @property
    def state(self) -> Path:
        return self.checkpoint_dir / "state.json"

    def read_json(self, path: Path) -> dict:
        if not path.is_file():
            raise FileNotFoundError(f"{path.name} not found in {self.root}: is this a run directory from `bcd train`?")
        return json.loads(path.read_text())


PRETRAIN_KIND = "pretrain"     # run.json "kind" of a `bcd pretrain` run (train.pretrain)


def unfinished(root: Path, info: dict) -> str | None:
    """Why the run in `root` (its run.json `info`) cannot be evaluated, exported or
    slimmed, or None when it is a finished, classifying run."""
    if info.get("kind") == PRETRAIN_KIND:
        return (f"{root} is a pretraining run (`bcd pretrain`): its head is untrained; fine-tune it first "
                f"(bcd train --weights {root} ...)")
    if info.get("status") != "complete" or "threshold" not in info:
        return f"{root} is not a finished run (status {info.get('status')!r}, no operating threshold yet): " \
               "finish `bcd train` first"
    return None
