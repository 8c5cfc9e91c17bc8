"""The assist: conversations from words to actions (local intents first, then the model)."""
