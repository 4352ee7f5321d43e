"""Backprop by hand: derivative rules, losses, the chain parser, the hand engine and its check."""
