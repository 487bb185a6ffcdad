"""``python -m excb`` / ``torchrun --nproc_per_node N -m excb --config ... [key=value ...]``: pretraining."""
import sys

from excb import ExcbError
from excb.train import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except ExcbError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
