"""Work after the call: the job queue, archives, peaks, summaries and titles, import,
retention and echo cancellation."""
