"""The `gallery` command line: thin Typer commands over the library."""
