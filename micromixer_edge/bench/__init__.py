"""mixer-bench: speed, memory and cold start of exported models, against the original generate."""
