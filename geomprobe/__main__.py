import sys

try:
    from geomprobe.cli import main
except KeyboardInterrupt:  # Ctrl-C while the imports run: no traceback
    print("geomprobe: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
