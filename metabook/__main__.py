"""``python -m metabook ...`` (and ``torchrun -m metabook ...``): the command line."""
from metabook.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
