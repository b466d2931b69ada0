"""`python -m lightft`: the `lightft` command without the console script (a source tree that was never installed has none on PATH).

The one module not exported from a notebook: nbdev appends to a module that no notebook owns, so these three lines are
kept by hand; chapter 13 (nbs/13_cli.ipynb) documents them."""
import sys
from lightft.cli import main

if __name__ == "__main__": sys.exit(main())
