"""Exits as soon as the client sends initialize."""

import sys

sys.stdin.readline()
sys.exit(3)
