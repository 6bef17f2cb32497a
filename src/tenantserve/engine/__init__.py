"""Starting, watching and stopping a real vLLM engine process."""
