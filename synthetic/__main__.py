"""``python -m synthetic TASK --output_dir DIR --num_train N --num_test M --seed S [--option value ...]``."""

from __future__ import annotations

import sys

import fire

from synthetic import tasks, write_dataset

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in tasks():
        print(f"usage: python -m synthetic TASK --output_dir DIR [--num_train N --num_test M --seed S]; "
              f"TASK is one of: {', '.join(tasks())}", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    fire.Fire(write_dataset)
