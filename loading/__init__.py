"""Loading: checkpoints (the Hub's safetensors files, llama.cpp's GGUF files) and the tokenizers that go with them.

Nothing here runs the model: `gpt2.py` is the forward pass; these files only turn files on disk into its weights,
its config and a tokenizer."""
