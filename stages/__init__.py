"""Thin DVC stage CLIs: parse arguments, load params, make one library call, write outputs."""
