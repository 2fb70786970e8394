"""The order flow of the user's story: orders -> inventory -> payment -> notification."""
