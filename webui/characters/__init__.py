"""Characters: the store of YAML characters and pictures, SillyTavern/TavernAI cards."""
