import sys

from infogan_cells.cli import main

sys.exit(main())
