"""Pure image compute: decode, encode, the print-size rule, tiling and the engines.
No Ray, no HTTP, no settings, no network."""
