"""In-process agent plugins and their lifecycle (the agents issue)."""
