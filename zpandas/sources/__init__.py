"""Readers that turn files into Arrow tables tagged with where their rows came from."""

from .csv import Block, CsvReader

__all__ = ["Block", "CsvReader"]
