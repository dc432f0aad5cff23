"""Build-only tools (the browser Whisper export, word error rate): not used at run time."""
