"""``python -m excb`` / ``torchrun --nproc_per_node N -m excb --config ... [key=value ...]``: pretraining."""
import sys

from excb import ExcbError, one_line
from excb.train import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except ExcbError as e:
        print(f"excb: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("excb: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - DataLoader workers re-raise our errors in their own type
        if "ExcbError" not in str(e):
            raise
        print(f"excb: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
