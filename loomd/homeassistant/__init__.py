"""Home Assistant: the board as its voice satellite over the ESPHome native API."""
