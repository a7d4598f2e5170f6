"""Extensions: manifests, enabled state, the hook host, text-generation-webui's adapter, installs."""
