import sys

from tower.cli import main

sys.exit(main())
