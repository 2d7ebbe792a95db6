"""``python -m lib.training --config run.json --out weights.pt`` (or under ``torchrun``)."""

from lib.training.loop import main

main()
