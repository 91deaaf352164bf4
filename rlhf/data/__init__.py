"""Where rows come from (files, the built-in tasks), how they become tokens, and the embedded model."""
