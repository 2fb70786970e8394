import sys

from mailbag.cli import main

sys.exit(main())
