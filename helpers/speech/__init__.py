"""Speech engines: VAD, STT, TTS and its scheduling, the prompt cache, lines and text."""
