"""attnscope's Textual workbench: it draws what `sae/` computes and never computes science itself."""
