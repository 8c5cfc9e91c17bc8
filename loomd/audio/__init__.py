"""Voice: audio sources and sinks, VAD, wake word, STT, TTS (the voice pipeline issue)."""
