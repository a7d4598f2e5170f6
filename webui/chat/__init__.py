"""The one path from a message to a streamed reply: reply, actions, modes, prompting, history, notebook."""
