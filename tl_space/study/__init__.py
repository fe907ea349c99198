"""The study: every strategy at every few-shot size under one budget, and its report."""
