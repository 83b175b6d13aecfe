"""End-to-end workflows composed from the library; each reads like the recipe it runs."""
