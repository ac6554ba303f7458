"""Applications built on tether: what the command-line interface runs."""
