import sys

from geomprobe.cli import main

sys.exit(main())
