"""The local/cloud model router (the router issue)."""
