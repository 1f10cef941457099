"""Command-line interface: ``cmt-deeplab <command>``."""
