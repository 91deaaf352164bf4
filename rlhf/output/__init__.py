"""What a run leaves behind: metrics (metrics.jsonl and the trackers), the end-of-run report, the
resumable states and finished-stage marks, and the final export."""
