"""The HTTP routes: each parses its request, calls the service that decides, and answers."""
