"""The paper: its models, its published numbers and its experiments as specs."""
