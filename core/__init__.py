"""What every layer shares and nothing in it imports back: the batch contract and plugin loading."""
