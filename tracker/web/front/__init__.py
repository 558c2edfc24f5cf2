"""The API front process: polls and streams served apart from the data plane."""
