"""What people run: the command line, the demo, the atlas site, the Gradio Space and publishing."""
