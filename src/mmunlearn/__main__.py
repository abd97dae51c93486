"""`python -m mmunlearn` (what `accelerate launch -m mmunlearn` runs)."""

from .cli import main

main()
