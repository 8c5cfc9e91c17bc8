"""Not an MCP server: writes garbage on stdout, then waits."""

import sys
import time

sys.stdout.write('this is not JSON-RPC\n{"also": "not a message"}\n')
sys.stdout.flush()
time.sleep(3600)
