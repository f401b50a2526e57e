"""The Hugging Face Hub, through huggingface_hub's own functions: a base given as a Hub id (base.py) and the upload
of a published output (push.py). Nothing is imported here: each module loads huggingface_hub only when it runs."""
