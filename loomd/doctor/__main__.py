"""`python -m loomd.doctor`: the same as `loomctl doctor`, plus --debug (tracebacks)."""

import sys

from loomd.doctor.run import main

sys.exit(main())
