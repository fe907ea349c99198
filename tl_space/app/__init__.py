"""The Gradio app: the page, inference, explanations, and what keeps a shared server healthy."""
