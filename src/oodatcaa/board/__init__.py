"""The board behind ``oodatcaa watch``: a snapshot of the workspace's files and its rich rendering."""
