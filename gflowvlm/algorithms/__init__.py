"""Training algorithms. Each is a class built from the Trainer with `update(iteration) -> metrics` and a
checkpointable `state_dict()` / `load_state_dict()`; the loop, optimizer and checkpoints live in trainer.py."""
