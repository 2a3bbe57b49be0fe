"""Command-line interface: argument parsing at the edge, typed library calls underneath."""
