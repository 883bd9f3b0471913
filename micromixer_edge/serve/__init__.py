"""mixer-serve: an OpenAI-compatible completion server on the decode engine (the [serve] extra).

The runtime never imports this package."""
