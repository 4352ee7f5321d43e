"""Blocks of a model: Block, collecting boundary pairs, comparing stand-ins, replacing a block in use."""
