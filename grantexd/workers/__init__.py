"""Background workers that run beside the HTTP server in the daemon process."""
