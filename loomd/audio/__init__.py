"""Hearing and speaking: mic -> wake -> VAD -> whisper.cpp -> agents/router -> Piper.

Light at import (the registry imports `loomd.audio.component`); the model libraries are
imported by the stages when the component starts. See docs/design/voice.md."""
