"""demo: the Gradio chat demo (`python -m demo`) and the OpenAI-compatible server
(`python -m demo.serve`)."""
